"""Real Redis (a database of its own, flushed around each test), the PostgreSQL and SQLite
databases of ``tests/conftest.py``, and a Dramatiq ``RedisBroker`` of the test's own to put
messages where the worker would (never the global broker of the in-process tests).

Redis must answer: a missing server fails the run, nothing is skipped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from click.testing import CliRunner, Result
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine

from billingworker.cli import main
from billingworker.db import unit_of_work
from billingworker.domain.models import Client, DailyRun, DailyRunTask, JobFailure
from tests.redis_server import run_redis_url

# A Redis server of this test run's own (tests/redis_server.py): two runs never flush each other.
REDIS_URL = os.environ.get("TEST_OPS_REDIS_URL") or run_redis_url(1)
RABBITMQ_URL = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
NAMESPACE = "dramatiq"


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        raise RuntimeError(f"Redis at {REDIS_URL} does not answer ({exc}): start redis-server") from exc
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_broker(redis_client) -> Iterator[RedisBroker]:
    """A Dramatiq broker on the test Redis, for enqueueing and consuming as a worker would."""
    broker = RedisBroker(url=REDIS_URL)
    for queue in ("billing", "emails"):
        broker.declare_queue(queue)
    yield broker
    broker.close()


def message(actor: str = "apply_payment", queue: str = "billing", *, age_s: float = 0, **options) -> Message:
    return Message(queue_name=queue, actor_name=actor, args=(), kwargs={"invoice_id": 7, "amount": "10.00"},
                   options=options, message_timestamp=int((time.time() - age_s) * 1000))


def take(broker: RedisBroker, queue: str = "billing"):
    """Fetch the head of ``queue`` as a worker does (it is then in progress); returns (consumer, message)."""
    consumer = broker.consume(queue, prefetch=1, timeout=100)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        proxy = next(consumer)
        if proxy is not None:
            return consumer, proxy
    raise AssertionError(f"nothing to fetch on {queue}")


def kill(broker: RedisBroker, msg: Message, queue: str = "billing") -> str:
    """Enqueue ``msg`` and dead-letter it the way the worker does (fetch, then nack); its redis id."""
    sent = broker.enqueue(msg)
    consumer, proxy = take(broker, queue)
    assert proxy.message_id == sent.message_id
    consumer.nack(proxy)
    consumer.close()
    return sent.options["redis_message_id"]


def db_url(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def cli(engine: Engine | None, *args: str, broker_url: str = REDIS_URL, input: str | None = None,
        database_url: str | None = None) -> Result:
    env = {"BROKER_URL": broker_url, "DATABASE_URL": database_url or (db_url(engine) if engine else "sqlite://")}
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


NOW = datetime.now(UTC)


def add_run(engine: Engine, *, status: str = "succeeded", finished_hours_ago: float | None = 1.0,
            run_date=None, dry_run: bool = False, failures: int = 0, invoices: int = 0,
            now: datetime | None = None) -> int:
    """A daily run row (and one task) as the daily run leaves it; returns its id."""
    # Relative to the moment of the call, not of the import: the health check reads the real
    # clock, and a long test run must not age the rows ("30.1 h ago" for 30).
    now = now or datetime.now(UTC)
    finished = now - timedelta(hours=finished_hours_ago) if finished_hours_ago is not None else None
    started = (finished or now) - timedelta(minutes=5)
    with unit_of_work(engine) as session:
        run = DailyRun(run_date=run_date or started.date(), dry_run=dry_run, status=status, trigger="test",
                       started_at=started, finished_at=finished)
        session.add(run)
        session.flush()
        session.add(DailyRunTask(run_id=run.id, task="generate", position=0, status="done", batches_total=2,
                                 batches_done=2, clients=40, invoices_created=invoices, emails_queued=invoices,
                                 failures=failures, started_at=started, finished_at=finished))
        for n in range(failures):
            session.add(JobFailure(actor="generate_due_invoices_batch", message_id=f"m{n}", client_id=n + 1,
                                   error="ValidationError", reason="no currency", created_at=started, run_id=run.id))
        session.commit()
        return run.id


def add_parked_client(engine: Engine, *, reason: str = "generate: no currency") -> int:
    with unit_of_work(engine) as session:
        client = Client(first_name="Ada", last_name="Lovelace", company_name="Analytical Ltd",
                        email="ada@example.com", failure_count=3, parked_at=NOW - timedelta(hours=2),
                        parked_reason=reason)
        session.add(client)
        session.commit()
        return client.id
