"""What the operator commands share: the clock, the --queue option, a Redis-backed ops store that turns
errors into clear messages, the job_failures of messages, and a few column formats."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import click

from ..config import get_config
from ..queue_names import QUEUES
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


#: Every id column is an INTEGER (PostgreSQL int4), as ``actors.arguments.MAX_ID`` says (not
#: imported: importing ``actors`` binds the jobs to a broker): ids are 1 .. 2**31 - 1.
MAX_ID = 2**31 - 1
#: The click type of an id option or argument: a larger number is refused by click (exit status
#: 2, naming the option) instead of overflowing the database's integer.
ID = click.IntRange(1, MAX_ID)
#: The most rows a ``--limit`` of a list command takes.
MAX_LIMIT = 10_000


@contextmanager
def json_error(as_json: bool) -> Iterator[None]:
    """With ``--json``, an error (a broker that does not answer) is also one JSON document on
    stdout, ``{"error": "..."}``, so a script reading stdout sees why; exit status 1 all the same."""
    try:
        yield
    except click.ClickException as exc:
        if as_json:
            click.echo(json.dumps({"error": exc.format_message()}, indent=2))
        raise


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


# --- services that do not answer ----------------------------------------------------------------

#: What a database says of a table that does not exist (SQLite, PostgreSQL): the schema is not migrated.
_MISSING_TABLE = ("no such table", "does not exist")


def _first_line(exc: BaseException) -> str:
    from ..domain.redaction import mask_text

    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return mask_text(f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "), 300)


@contextmanager
def services_answer() -> Iterator[None]:
    """A database that does not answer or is not migrated, or a broker that does not answer,
    becomes a clear error (exit status 1) naming it, rather than a traceback."""
    import dramatiq
    from redis.exceptions import RedisError
    from sqlalchemy.exc import DBAPIError

    from .queues import safe_url

    try:
        yield
    except DBAPIError as exc:
        from sqlalchemy.engine import make_url

        url = make_url(get_config().database_url).render_as_string(hide_password=True)
        hint = ("; its tables are missing: run `billingworker db upgrade`"
                if any(text in str(exc.orig).lower() for text in _MISSING_TABLE) else "")
        raise click.ClickException(f"database at {url}: {_first_line(exc)}{hint}") from None
    except (RedisError, dramatiq.errors.DramatiqError) as exc:
        raise click.ClickException(f"broker at {safe_url(get_config().broker_url)} did not answer: "
                                   f"{_first_line(exc)}") from None


def answering(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``services_answer`` around a command's function (under its click decorators)."""
    import functools

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        with services_answer():
            return fn(*args, **kwargs)

    return run
