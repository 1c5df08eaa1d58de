"""The one place the console reaches the broker (queues, retries, dead letters, samples) and
runs the dry run: pages never open Redis themselves, so a change in how the broker is read is made
here once. Everything is done by the ``ops`` functions the CLI uses, so the console shows what
``billingworker status``, ``dead-letters``, ``retries`` and ``daily-run --dry-run`` print. (The
database read models, ``ops.runs``, ``ops.failures``, ``ops.outbox``, are called by the pages.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

from sqlalchemy import Engine

from ..ops.dead_letters import DeadLetter, DeadLetters, check_correction
from ..ops.enqueue_check import parse_assignments
from ..ops.errors import UnsupportedBroker
from ..ops.queues import broker_kind, redis_client, safe_url
from ..ops.retries import Retries
from ..ops.status import collect_status
from ..queue_names import QUEUES


def status(broker_url: str, engine: Engine, *, now: datetime) -> dict[str, Any]:
    """What ``billingworker status`` shows (queues, live workers, runs, parked), as data."""
    return collect_status(broker_url, now=now, engine=engine)


@contextmanager
def redis_for(broker_url: str) -> Iterator[Any]:
    """A Redis client on the broker; ``UnsupportedBroker`` on RabbitMQ (its retries and dead
    letters are managed in RabbitMQ's own tools)."""
    if broker_kind(broker_url) != "redis":
        raise UnsupportedBroker(f"retries and dead letters are managed on a Redis broker; {safe_url(broker_url)} "
                                f"is {broker_kind(broker_url)} (use RabbitMQ's management UI)")
    client = redis_client(broker_url)
    try:
        yield client
    finally:
        client.close()


@contextmanager
def dead_letters(broker_url: str) -> Iterator[DeadLetters]:
    with redis_for(broker_url) as client:
        yield DeadLetters(client)


@contextmanager
def retries(broker_url: str) -> Iterator[Retries]:
    with redis_for(broker_url) as client:
        yield Retries(client)


# --- the dry run --------------------------------------------------------------------------------

def dry_run_preview(engine: Engine, day: date) -> dict[str, Any]:
    """The day's dry run (``actors.day_preview.preview_day``: the tasks' own code, chained, rolled back), as
    ``billingworker daily-run --dry-run --json`` shows it (``ops.daily_cli.dry_run_view``): per
    task its counts, amounts per currency, lines and failing clients."""
    from ..actors.day_preview import preview_day
    from ..ops.daily_cli import dry_run_view

    return dry_run_view(engine, day, preview_day(day, engine=engine))


def samples(broker_url: str, *, since: datetime) -> list[dict[str, Any]]:
    """Depth and throughput samples (``ops.samples``: written by the scheduler) since ``since``."""
    from ..ops.samples import read_samples

    return read_samples(broker_url, since)



def corrections(letter: DeadLetter, text: str) -> dict[str, Any]:
    """The corrected arguments of a requeue form, one ``NAME=VALUE`` per line (VALUE read as by
    ``billingworker enqueue``), checked against the letter's job as ``dead-letters requeue --set``
    checks them. ``ValueError``/``OpsError`` saying what is wrong; nothing is requeued then."""
    changes = parse_assignments([line.strip() for line in text.splitlines() if line.strip()])
    if changes:
        # The letter's arguments, positional ones included, bound to the job's signature and
        # corrected: what the requeue sends (all by name), checked as the CLI checks it.
        check_correction(letter, changes)
    return changes


__all__ = ["QUEUES", "status", "dead_letters", "retries", "dry_run_preview", "samples", "corrections"]
