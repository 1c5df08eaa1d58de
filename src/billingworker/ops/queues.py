"""Queue state as the broker holds it: waiting, delayed, in-progress and dead messages, live workers.

Reads the broker directly (plain redis-py, or a passive declare on RabbitMQ). It never goes
through Dramatiq's dispatch script: that script records its caller as a live worker (a
heartbeat), which a read-only status command must not do.

``None`` in a count means "this broker cannot tell" (shown as ``n/a``), never "zero".
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from dramatiq.brokers.redis import DEFAULT_HEARTBEAT_TIMEOUT

from ..queue_names import QUEUES
from .consumers import CONSUMERS_KEY, read_consumers

#: Dramatiq's key prefix in Redis (``RedisBroker(namespace=...)``); ours is the default.
NAMESPACE = "dramatiq"
#: A worker process whose last heartbeat is older than this (milliseconds) is offline:
#: Dramatiq's own rule (``RedisBroker.heartbeat_timeout``), unless BROKER_HEARTBEAT_TIMEOUT_MS says.
HEARTBEAT_TIMEOUT_MS = DEFAULT_HEARTBEAT_TIMEOUT
#: Seconds to wait for a broker to answer before reporting it down.
CONNECT_TIMEOUT = 5
#: Consumers ``status`` lists: those seen within the last hour (a gone one shows how long ago), at most 50.
CONSUMERS_SHOWN_MS = 3_600_000
MAX_CONSUMERS_SHOWN = 50


@dataclass(frozen=True)
class QueueState:
    """One queue's messages. ``oldest_age_seconds`` is 0 when nothing waits."""

    queue: str
    waiting: int | None
    delayed: int | None
    in_progress: int | None
    dead: int | None
    oldest_age_seconds: float | None
    note: str = ""
    #: Live worker processes consuming this queue (Redis: consumers seen within the heartbeat
    #: timeout that name it; RabbitMQ: the queue's consumers); None if unknown.
    consumers: int | None = None


@dataclass(frozen=True)
class BrokerState:
    """What the broker of ``url`` holds now. ``kind`` is redis, rabbitmq or stub."""

    kind: str
    url: str
    queues: list[QueueState] = field(default_factory=list)
    #: Live worker processes: on Redis, consumers (``ops.consumers``) seen within
    #: HEARTBEAT_TIMEOUT_MS (never a process that only enqueues); on RabbitMQ, the consumers of the queues.
    workers: int | None = None
    note: str = ""
    #: Redis: the consumers seen in the last CONSUMERS_SHOWN_MS, most recent first (``Consumer.as_dict``).
    consumers: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def broker_kind(url: str) -> str:
    if url.startswith(("redis://", "rediss://", "unix://")):
        return "redis"
    if url.startswith(("amqp://", "amqps://")):
        return "rabbitmq"
    if url.startswith("stub:"):
        return "stub"
    raise ValueError(f"BROKER_URL: {safe_url(url)!r} is not redis://, amqp:// or stub://")


def safe_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, fit for a screen or a log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def redis_client(url: str) -> redis.Redis:
    """A plain Redis client on ``url`` (its database number included), failing fast if down."""
    return redis.Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=CONNECT_TIMEOUT * 2)


def read_broker_state(url: str, queues: tuple[str, ...] = QUEUES, *, namespace: str = NAMESPACE,
                      now_ms: int | None = None) -> BrokerState:
    """Read the state of ``queues`` on the broker of ``url``; raises the client's error if it is down."""
    kind = broker_kind(url)
    if kind == "redis":
        client = redis_client(url)
        try:
            return read_redis_state(client, queues, namespace=namespace, now_ms=now_ms, url=safe_url(url))
        finally:
            client.close()
    if kind == "rabbitmq":
        return read_rabbitmq_state(url, queues)
    return BrokerState("stub", url, [QueueState(q, None, None, None, None, None) for q in queues],
                       note="in-process broker: its queues live inside the process that runs it")


def heartbeat_timeout_ms() -> int:
    """The workers' heartbeat timeout: the same setting ``broker.make_broker`` gives Dramatiq."""
    from ..config import get_config

    return get_config().broker_heartbeat_timeout_ms or HEARTBEAT_TIMEOUT_MS


def read_redis_state(client: redis.Redis, queues: tuple[str, ...] = QUEUES, *, namespace: str = NAMESPACE,
                     now_ms: int | None = None, url: str = "") -> BrokerState:
    """Counts from Dramatiq's keys (see ``dramatiq/brokers/redis/dispatch.lua``), in one MULTI.

    waiting = ids in the list ``Q``; delayed = messages in ``Q.DQ.msgs`` (retries waiting for
    their backoff, held by a worker or not); in progress = ids in the workers' ``__acks__`` sets
    (fetched, running or prefetched, not yet acknowledged); dead = ids in ``Q.XQ``.
    """
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    heartbeats = f"{namespace}:__heartbeats__"
    # Every worker id still in the heartbeats set may hold messages (a dead one's are moved
    # back by Dramatiq's maintenance); only the recent ones are live.
    worker_ids = [w.decode() for w in client.zrange(heartbeats, 0, -1)]
    pipe = client.pipeline(transaction=True)
    pipe.zcount(CONSUMERS_KEY, now_ms - heartbeat_timeout_ms(), "+inf")
    for queue in queues:
        key = f"{namespace}:{queue}"
        pipe.llen(key)
        pipe.hlen(f"{key}.DQ.msgs")
        pipe.zcard(f"{key}.XQ")
        pipe.lindex(key, 0)
        for worker_id in worker_ids:
            pipe.scard(f"{namespace}:__acks__.{worker_id}.{queue}")
    replies = iter(pipe.execute())
    workers = next(replies)
    live = read_consumers(client, now_ms=now_ms, within_ms=heartbeat_timeout_ms())
    states = []
    for queue in queues:
        waiting, delayed, dead, first_id = next(replies), next(replies), next(replies), next(replies)
        in_progress = sum(next(replies) for _ in worker_ids)
        age = _oldest_age(client, f"{namespace}:{queue}", first_id, now_ms)
        states.append(QueueState(queue, waiting, delayed, in_progress, dead, age,
                                 consumers=sum(1 for c in live if c.consumes(queue))))
    consumers = [c.as_dict() for c in read_consumers(client, now_ms=now_ms, within_ms=CONSUMERS_SHOWN_MS)]
    return BrokerState("redis", url, states, workers=workers, consumers=consumers[:MAX_CONSUMERS_SHOWN])


def _oldest_age(client: redis.Redis, key: str, first_id: bytes | None, now_ms: int) -> float | None:
    """Seconds since the first waiting message was enqueued (its ``message_timestamp``)."""
    for _ in range(3):
        if first_id is None:
            return 0.0
        data = client.hget(f"{key}.msgs", first_id)
        if data is not None:
            try:
                stamp = json.loads(data)["message_timestamp"]
                return max(0.0, (now_ms - int(stamp)) / 1000)
            except (ValueError, KeyError, TypeError):
                return None  # a message written by hand without a timestamp: age unknown
        # A worker popped it between our two reads: look at the new head.
        first_id = client.lindex(key, 0)
    return None


def read_rabbitmq_state(url: str, queues: tuple[str, ...] = QUEUES) -> BrokerState:
    """Ready-message counts of ``Q``, ``Q.DQ`` and ``Q.XQ`` by passive declare.

    RabbitMQ tells neither what is in progress (unacknowledged) nor when the first message was
    published: those are ``None``. Live workers are the consumers of the queues (one per worker
    process and queue).
    """
    import pika

    params = pika.URLParameters(url)
    params.socket_timeout = CONNECT_TIMEOUT
    params.blocked_connection_timeout = CONNECT_TIMEOUT
    connection = pika.BlockingConnection(params)
    try:
        states, consumers = [], []
        for queue in queues:
            counts = [_passive_declare(connection, name) for name in (queue, f"{queue}.DQ", f"{queue}.XQ")]
            missing = [name for name, c in zip((queue, f"{queue}.DQ", f"{queue}.XQ"), counts, strict=True)
                       if c is None]
            note = f"not declared yet (start a worker): {', '.join(missing)}" if missing else ""
            main = counts[0]
            consumers.append(main[1] if main else 0)
            states.append(QueueState(queue, main[0] if main else 0, counts[1][0] if counts[1] else 0, None,
                                     counts[2][0] if counts[2] else 0, None, note, consumers=main[1] if main else 0))
    finally:
        connection.close()
    return BrokerState("rabbitmq", safe_url(url), states, workers=max(consumers, default=0))


def _passive_declare(connection, name: str) -> tuple[int, int] | None:
    """(messages ready, consumers) of queue ``name``; None if it does not exist."""
    import pika

    channel = connection.channel()
    try:
        method = channel.queue_declare(queue=name, passive=True).method
        return method.message_count, method.consumer_count
    except pika.exceptions.ChannelClosedByBroker:  # 404 NOT_FOUND closes the channel
        return None
    finally:
        if channel.is_open:
            channel.close()
