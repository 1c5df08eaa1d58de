"""What the operator commands share: the clock, the --queue option, a Redis-backed ops store that turns
errors into clear messages, the job_failures of messages, and a few column formats."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click

from ..broker import QUEUES
from ..config import get_config
from .errors import OpsError


def utc_now() -> datetime:
    return datetime.now(UTC)


def ago(seconds: float | None) -> str:
    from .status import format_age

    return "-" if seconds is None else format_age(seconds) + " ago"


# --- dead letters -------------------------------------------------------------------------------

queue_option = click.option("--queue", "queue", type=click.Choice(QUEUES), default=None,
                            help="Only this queue (default: every queue).")


@contextmanager
def redis_store(make: Callable[[Any], Any], what: str, rabbitmq_hint: str) -> Iterator:
    """An ops store (DeadLetters, Retries) on the Redis of BROKER_URL; any Redis or ops error
    becomes a clear message and exit status 1."""
    from redis.exceptions import RedisError

    from .queues import broker_kind, redis_client, safe_url

    url = get_config().broker_url
    try:
        kind = broker_kind(url)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    if kind != "redis":
        hint = f" {rabbitmq_hint}" if kind == "rabbitmq" else ""
        raise click.ClickException(f"{what} are read on a Redis broker; {safe_url(url)} is {kind}.{hint}")
    client = redis_client(url)
    try:
        yield make(client)
    except RedisError as exc:
        raise click.ClickException(f"Redis at {safe_url(url)}: {exc}") from None
    except OpsError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


def selected_queues(queue: str | None) -> tuple[str, ...]:
    return (queue,) if queue else QUEUES


def job_failures_of(message_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The ``job_failures`` rows of these messages; nothing (and a note) if the database is away."""
    if not any(message_ids):
        return {}
    from ..db import get_engine, unit_of_work
    from .runs import failures_by_message

    try:
        with unit_of_work(get_engine()) as session:
            return failures_by_message(session, message_ids)
    except Exception as exc:  # noqa: BLE001 - the messages are still worth showing without the reasons
        click.echo(f"(job_failures not read: {type(exc).__name__})", err=True)
        return {}


def id_column():
    """A redis id column: never cut (it is what an operator copies into show, requeue, purge)."""
    from .tables import Column

    return Column("id", no_wrap=True, min_width=36)


def short_json(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[:limit - 3] + "..."
