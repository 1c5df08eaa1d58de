"""Which worker processes consume the queues (Redis), and how many messages they processed.

Dramatiq's own heartbeats (``dramatiq:__heartbeats__``) cannot say it: its dispatch script
records every process that talks through it, so the scheduler and each ``billingworker
enqueue`` count as "workers" for a minute. ``ConsumerPresence`` is a middleware that only a
worker process activates (``after_worker_boot``: a ``dramatiq`` worker, the foreground
``daily-run``); every PRESENCE_INTERVAL seconds it writes

- ``billingworker:consumers`` (sorted set): the consumer's id scored by the time in ms it was
  last seen, and ``billingworker:consumers:info`` (hash): its host, pid, queues, start time;
- ``billingworker:throughput`` (hash): ``<queue>:processed`` and ``<queue>:failed``, the totals
  of messages processed (failed: an attempt that raised, retried or not), added to (HINCRBY)
  with what it counted in memory since the last write. ``ops.samples`` turns them into throughput.

It is a presence record, not a lock or a queue: a consumer that stops cleanly removes itself; a
killed one simply stops being seen, and entries unseen for FORGET_AFTER_MS are dropped.
RabbitMQ knows its consumers itself (``queues.read_rabbitmq_state``): nothing is written there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import redis
from dramatiq.broker import Broker
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

log = logging.getLogger(__name__)

CONSUMERS_KEY = "billingworker:consumers"
CONSUMER_INFO_KEY = "billingworker:consumers:info"
THROUGHPUT_KEY = "billingworker:throughput"
#: Seconds between two presence records of a consumer (and flushes of its counts).
PRESENCE_INTERVAL = 10.0
#: A consumer unseen this long (ms) is forgotten: it is listed as gone until then.
FORGET_AFTER_MS = 24 * 3600 * 1000


def _now_ms() -> int:
    return int(time.time() * 1000)


class ConsumerPresence(Middleware):
    """Record this worker process as a consumer of its queues, and its processed/failed counts,
    every ``interval`` seconds, from its boot to its shutdown (see the module docstring)."""

    def __init__(self, client: redis.Redis, *, interval: float = PRESENCE_INTERVAL) -> None:
        self.client = client
        self.interval = interval
        self.consumer_id = ""
        self.info: dict[str, Any] = {}
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker: Broker, worker) -> None:
        queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())
        host, pid = socket.gethostname(), os.getpid()
        self.consumer_id = f"{host}:{pid}:{uuid.uuid4().hex[:8]}"
        self.info = {"host": host, "pid": pid, "queues": queues, "started_ms": _now_ms()}
        self._stop.clear()
        self.record()
        self._thread = threading.Thread(target=self._beat, name="consumer-presence", daemon=True)
        self._thread.start()

    def before_worker_shutdown(self, broker: Broker, worker) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval)
        try:
            self._flush_counts()
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(CONSUMERS_KEY, self.consumer_id)
            pipe.hdel(CONSUMER_INFO_KEY, self.consumer_id)
            pipe.execute()
        except redis.RedisError as exc:
            log.warning("could not remove the consumer record %s: %s", self.consumer_id, exc)

    def after_process_message(self, broker: Broker, message, *, result=None, exception=None) -> None:
        outcome = "processed" if exception is None else "failed"
        with self._lock:
            self._counts[f"{q_name(message.queue_name)}:{outcome}"] += 1

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.record()
            except redis.RedisError as exc:  # Redis restarting: the next beat tries again
                log.warning("consumer presence not recorded: %s", exc)

    def record(self) -> None:
        """Write this consumer's presence (now) and the counts gathered since the last write."""
        now = _now_ms()
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(CONSUMERS_KEY, {self.consumer_id: now})
        pipe.hset(CONSUMER_INFO_KEY, self.consumer_id, json.dumps(self.info))
        pipe.zremrangebyscore(CONSUMERS_KEY, 0, now - FORGET_AFTER_MS)
        pipe.execute()
        self._flush_counts()

    def _flush_counts(self) -> None:
        with self._lock:
            counts, self._counts = self._counts, Counter()
        if not counts:
            return
        try:
            pipe = self.client.pipeline(transaction=True)
            for field, n in counts.items():
                pipe.hincrby(THROUGHPUT_KEY, field, n)
            pipe.execute()
        except redis.RedisError:
            with self._lock:  # kept for the next write: counts are not lost to a Redis restart
                self._counts.update(counts)
            raise


@dataclass(frozen=True)
class Consumer:
    """One consuming worker process as last recorded."""

    id: str
    host: str
    pid: int | None
    queues: list[str]
    started_at: str | None
    last_seen_at: str
    last_seen_seconds_ago: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def consumes(self, queue: str) -> bool:
        """Whether it consumes ``queue`` (a record without its queues is taken to consume all)."""
        return not self.queues or queue in self.queues


def _iso(ms: int | float | None) -> str | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, UTC).isoformat()


def read_consumers(client: redis.Redis, *, now_ms: int | None = None, within_ms: int | None = None) -> list[Consumer]:
    """The consumers recorded (seen within ``within_ms``, if given), the most recently seen first."""
    now_ms = _now_ms() if now_ms is None else now_ms
    low = "-inf" if within_ms is None else now_ms - within_ms
    members = client.zrevrangebyscore(CONSUMERS_KEY, "+inf", low, withscores=True)
    if not members:
        return []
    infos = client.hmget(CONSUMER_INFO_KEY, [m for m, _ in members])
    out = []
    for (member, score), raw in zip(members, infos, strict=True):
        try:
            info = json.loads(raw) if raw else {}
        except ValueError:
            info = {}
        info = info if isinstance(info, dict) else {}
        out.append(Consumer(member.decode(), str(info.get("host", "")),
                            info.get("pid") if isinstance(info.get("pid"), int) else None,
                            [str(q) for q in info.get("queues", []) if isinstance(q, str)],
                            _iso(info.get("started_ms") if isinstance(info.get("started_ms"), int) else None),
                            _iso(score) or "", round(max(0.0, (now_ms - score) / 1000), 3)))
    return out


def last_seen_ms(client: redis.Redis) -> int | None:
    """When (ms) the most recently seen consumer was seen; None if none is recorded."""
    newest = client.zrevrange(CONSUMERS_KEY, 0, 0, withscores=True)
    return int(newest[0][1]) if newest else None


def throughput_totals(client: redis.Redis) -> dict[str, dict[str, int]]:
    """``{queue: {"processed": n, "failed": n}}``: the totals every consumer flushed so far."""
    totals: dict[str, dict[str, int]] = {}
    for field, value in client.hgetall(THROUGHPUT_KEY).items():
        queue, _, outcome = field.decode().rpartition(":")
        if outcome in ("processed", "failed"):
            totals.setdefault(queue, {"processed": 0, "failed": 0})[outcome] = int(value)
    return totals
