"""``ops.samples``: queue depth and throughput kept in a capped Redis list, on the real Redis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from billingworker.ops import samples
from billingworker.ops.consumers import THROUGHPUT_KEY
from billingworker.ops.samples import SAMPLES_KEY, read_samples, record_sample

from .conftest import RABBITMQ_URL, REDIS_URL, kill, message

T0 = datetime(2026, 11, 20, 9, 0, 0, tzinfo=UTC)


def processed(redis_client, queue: str, n: int, failed: int = 0) -> None:
    """What the consuming workers flush (ops.consumers): totals per queue."""
    redis_client.hincrby(THROUGHPUT_KEY, f"{queue}:processed", n)
    if failed:
        redis_client.hincrby(THROUGHPUT_KEY, f"{queue}:failed", failed)


def test_a_sample_holds_each_queue_depth_and_the_processed_totals(redis_broker, redis_client):
    # Given: on billing one dead letter, two waiting, one retry; 40 messages processed so far
    kill(redis_broker, message())
    redis_broker.enqueue(message())
    redis_broker.enqueue(message())
    redis_broker.enqueue(message(), delay=60_000)
    processed(redis_client, "billing", 40, failed=2)

    # When
    sample = record_sample(REDIS_URL, T0)

    # Then
    assert sample["at"] == T0.isoformat() and sample["workers"] == 0
    billing, emails = sample["queues"]["billing"], sample["queues"]["emails"]
    assert (billing["waiting"], billing["delayed"], billing["in_progress"], billing["dead"]) == (2, 1, 0, 1)
    assert (billing["processed"], billing["failed"]) == (40, 2)
    assert (emails["waiting"], emails["processed"], emails["failed"]) == (0, 0, 0)
    assert redis_client.llen(SAMPLES_KEY) == 1


def test_one_sample_per_minute_however_many_schedulers_call(redis_client):
    first = record_sample(REDIS_URL, T0)
    same_minute = record_sample(REDIS_URL, T0 + timedelta(seconds=30))
    late_scheduler = record_sample(REDIS_URL, T0 - timedelta(seconds=5))  # a clock behind: no older slot
    next_minute = record_sample(REDIS_URL, T0 + timedelta(seconds=60))

    assert first is not None and next_minute is not None
    assert same_minute is None and late_scheduler is None
    assert redis_client.llen(SAMPLES_KEY) == 2


def test_read_samples_computes_throughput_per_minute_from_the_totals(redis_client):
    # Given: samples a minute apart, with 30 then 90 more billing messages processed (3 failed),
    # and Redis losing the counters before the last one
    record_sample(REDIS_URL, T0)
    processed(redis_client, "billing", 30)
    record_sample(REDIS_URL, T0 + timedelta(minutes=1))
    processed(redis_client, "billing", 90, failed=3)
    record_sample(REDIS_URL, T0 + timedelta(minutes=3))
    redis_client.delete(THROUGHPUT_KEY)
    record_sample(REDIS_URL, T0 + timedelta(minutes=4))

    # When
    everything = read_samples(REDIS_URL, T0)
    recent = read_samples(REDIS_URL, T0 + timedelta(minutes=2))

    # Then: oldest first; the first has no rate; a counter reset gives no rate, never a negative one
    assert [s["at"] for s in everything] == [(T0 + timedelta(minutes=m)).isoformat() for m in (0, 1, 3, 4)]
    rates = [s["throughput"]["billing"] for s in everything]
    assert rates[0] == {"processed_per_minute": None, "failed_per_minute": None}
    assert rates[1] == {"processed_per_minute": 30.0, "failed_per_minute": 0.0}
    assert rates[2] == {"processed_per_minute": 45.0, "failed_per_minute": 1.5}  # 90 in 2 minutes
    assert rates[3] == {"processed_per_minute": None, "failed_per_minute": None}
    assert everything[1]["throughput"]["emails"] == {"processed_per_minute": 0.0, "failed_per_minute": 0.0}
    # ... and the first sample after ``since`` is measured against the one before it
    assert [s["throughput"]["billing"]["processed_per_minute"] for s in recent] == [45.0, None]


def test_the_list_is_capped(redis_client, monkeypatch):
    monkeypatch.setattr(samples, "SAMPLES_KEPT", 3)

    for minute in range(5):
        record_sample(REDIS_URL, T0 + timedelta(minutes=minute))

    kept = read_samples(REDIS_URL, T0)
    assert [s["at"] for s in kept] == [(T0 + timedelta(minutes=m)).isoformat() for m in (2, 3, 4)]


def test_no_samples_on_rabbitmq():
    assert record_sample(RABBITMQ_URL, T0) is None
    assert read_samples(RABBITMQ_URL, T0) == []
