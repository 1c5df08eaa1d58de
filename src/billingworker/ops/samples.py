"""Queue depth and throughput over the last hours, kept where it costs nothing: a capped Redis list.

The scheduler calls ``record_sample`` on every tick; at most one sample per SAMPLE_INTERVAL
seconds of ``now`` is written, however many schedulers run (the first to claim the slot, in
one Lua call, writes it), to
the list ``billingworker:samples`` (newest first, LPUSH then LTRIM to SAMPLES_KEPT: 24 hours).
A sample holds, per queue, the messages waiting, delayed, in progress and dead, and the totals
of messages processed and failed (``ops.consumers``' counters); ``read_samples`` turns the
difference of two samples' totals into messages per minute, for the console's chart.

Redis brokers only: on RabbitMQ there is no Redis to keep them in (Prometheus keeps history).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import redis

from .consumers import throughput_totals
from .queues import NAMESPACE, broker_kind, read_redis_state, redis_client

SAMPLES_KEY = "billingworker:samples"
#: The last SAMPLE_INTERVAL slot (seconds since the epoch // SAMPLE_INTERVAL) a sample was taken
#: in: a scheduler whose slot is not newer skips its sample.
SAMPLE_SLOT_KEY = "billingworker:samples:slot"
_CLAIM_SLOT = """
local last = tonumber(redis.call("get", KEYS[1]) or "-1")
if last >= tonumber(ARGV[1]) then
    return 0
end
redis.call("set", KEYS[1], ARGV[1])
return 1
"""
#: Seconds between two samples, and samples kept (a day of them).
SAMPLE_INTERVAL = 60
SAMPLES_KEPT = 24 * 60
#: The per-queue counts a sample holds.
DEPTHS = ("waiting", "delayed", "in_progress", "dead")


def record_sample(broker_url: str, now: datetime) -> dict[str, Any] | None:
    """Write one sample of the broker of ``broker_url`` unless one was written less than
    SAMPLE_INTERVAL seconds ago (by any process); returns it, or None when skipped or when the
    broker is not Redis. Raises the client's error if Redis does not answer."""
    if broker_kind(broker_url) != "redis":
        return None
    client = redis_client(broker_url)
    try:
        return record_sample_to(client, now)
    finally:
        client.close()


def record_sample_to(client: redis.Redis, now: datetime, *, namespace: str = NAMESPACE,
                     interval: int = SAMPLE_INTERVAL) -> dict[str, Any] | None:
    """``record_sample`` on an open client (the console and the tests)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    slot = int(now.timestamp()) // interval
    if not client.eval(_CLAIM_SLOT, 1, SAMPLE_SLOT_KEY, slot):
        return None
    now_ms = int(now.timestamp() * 1000)
    state = read_redis_state(client, namespace=namespace, now_ms=now_ms)
    totals = throughput_totals(client)
    sample = {"at": now.astimezone(UTC).isoformat(), "at_ms": now_ms, "workers": state.workers, "queues": {
        q.queue: {"waiting": q.waiting, "delayed": q.delayed, "in_progress": q.in_progress, "dead": q.dead,
                  "oldest_age_seconds": q.oldest_age_seconds,
                  **totals.get(q.queue, {"processed": 0, "failed": 0})} for q in state.queues}}
    pipe = client.pipeline(transaction=True)
    pipe.lpush(SAMPLES_KEY, json.dumps(sample, separators=(",", ":")))
    pipe.ltrim(SAMPLES_KEY, 0, SAMPLES_KEPT - 1)
    pipe.execute()
    return sample


def read_samples(broker_url: str, since: datetime) -> list[dict[str, Any]]:
    """The samples taken at or after ``since``, oldest first, each with ``throughput``: per
    queue, messages ``processed_per_minute`` and ``failed_per_minute`` since the sample before
    (None for the first one, and after a counter reset). [] when the broker is not Redis."""
    if broker_kind(broker_url) != "redis":
        return []
    client = redis_client(broker_url)
    try:
        return read_samples_from(client, since)
    finally:
        client.close()


def read_samples_from(client: redis.Redis, since: datetime) -> list[dict[str, Any]]:
    """``read_samples`` on an open client."""
    since_ms = int(since.timestamp() * 1000)
    samples: list[dict[str, Any]] = []
    previous: dict[str, Any] | None = None
    # Oldest first; one before ``since`` is read too, as the base of the first delta.
    for raw in reversed(client.lrange(SAMPLES_KEY, 0, -1)):
        try:
            sample = json.loads(raw)
            at_ms = int(sample["at_ms"])
        except (ValueError, KeyError, TypeError):
            continue  # not one of ours
        if at_ms >= since_ms:
            sample["throughput"] = _throughput(previous, sample)
            samples.append(sample)
        previous = sample
    return samples


def _throughput(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    minutes = None if before is None else (after["at_ms"] - before["at_ms"]) / 60_000
    out = {}
    for queue, counts in after.get("queues", {}).items():
        rates: dict[str, float | None] = {}
        for outcome in ("processed", "failed"):
            old = (before or {}).get("queues", {}).get(queue, {}).get(outcome)
            new = counts.get(outcome)
            delta = None if old is None or new is None else new - old
            rates[f"{outcome}_per_minute"] = (round(delta / minutes, 3) if minutes and delta is not None
                                              and delta >= 0 else None)
        out[queue] = rates
    return out
