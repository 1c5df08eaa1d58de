"""``billingworker retries list|show`` (docs/operations.md#retries)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from ..config import get_config
from .cli_support import (
    MAX_LIMIT,
    id_column,
    job_failures_of,
    json_error,
    queue_option,
    redis_store,
    selected_queues,
    short_json,
)
from .runs import failure_text

# --- retries ------------------------------------------------------------------------------------

@click.group()
def retries() -> None:
    """Messages waiting for their next attempt after a failure (Redis): list, show.

    A message is named by its redis id (the first column of ``list``) or by its message_id.
    """


_RABBITMQ_RETRIES = ("RabbitMQ keeps them in the queues billing.DQ and emails.DQ and cannot list them without "
                     "taking them: `billingworker status` shows how many wait (column delayed).")


def _retry_store():
    from .retries import Retries

    return redis_store(Retries, "messages waiting for a retry", _RABBITMQ_RETRIES)


def _next_try(summary: dict[str, Any]) -> str:
    from .status import format_age

    at, seconds = summary["next_try_at"], summary["next_try_in_seconds"]
    if at is None:
        return "unknown"
    when = at[11:19]
    return f"{when} (in {format_age(seconds)})" if seconds > 0 else f"{when} (due {format_age(-seconds)} ago)"


def _attempt(summary: dict[str, Any]) -> str:
    total = summary["max_attempts"]
    return f"{summary['attempt']} of {total if total is not None else '?'}"


def _rabbitmq_retries(as_json: bool) -> bool:
    """On RabbitMQ: say what can be seen (the counts) and return True; False on any other broker."""
    from .queues import broker_kind, read_rabbitmq_state, safe_url

    url = get_config().broker_url
    try:
        if broker_kind(url) != "rabbitmq":
            return False
    except ValueError:
        return False
    try:
        state = read_rabbitmq_state(url)
    except Exception as exc:  # noqa: BLE001 - pika's errors: the broker does not answer
        raise click.ClickException(f"RabbitMQ at {safe_url(url)} does not answer: {type(exc).__name__}") from None
    delayed = {q.queue: q.delayed for q in state.queues}
    if as_json:
        click.echo(json.dumps({"broker": "rabbitmq", "listable": False, "waiting_for_retry": delayed,
                               "note": _RABBITMQ_RETRIES}, indent=2))
    else:
        click.echo(_RABBITMQ_RETRIES)
        click.echo("waiting for a retry now: " + ", ".join(f"{q} {n}" for q, n in delayed.items()))
    return True


@retries.command("list")
@queue_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, MAX_LIMIT),
              help="At most this many per queue, the next due first.")
@click.option("--json", "as_json", is_flag=True)
def retries_list(queue: str | None, limit: int, as_json: bool) -> None:
    """Retries to come: actor, arguments, attempt n of N, the last error, the next try.

    Secrets in the arguments and the errors are masked, long values cut.
    """
    from .tables import Column, print_table

    if _rabbitmq_retries(as_json):
        return
    now_ms = int(time.time() * 1000)
    with json_error(as_json), _retry_store() as store:
        found = [r for q in selected_queues(queue) for r in store.list(q, limit=limit)]
        totals = {q: store.count(q) for q in selected_queues(queue)}
        failures = job_failures_of([r.message_id for r in found])
        rows = [store.summary(r, now_ms=now_ms, failures=failures.get(r.message_id, [])) for r in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no message is waiting for a retry")
        return
    print_table(None, ["queue", id_column(), "actor", "arguments", Column("attempt", no_wrap=True), "next try",
                       "last error"],
                [[r["queue"], r["id"], r["actor"], short_json(r["kwargs"]), _attempt(r), _next_try(r),
                  (r["error"] or (failure_text(r["failures"][-1]) if r["failures"] else "-"))[:100]]
                 for r in rows])
    for q, total in totals.items():
        shown = sum(1 for r in rows if r["queue"] == q)
        if total > shown:
            click.echo(f"({q}: {shown} of {total} shown; --limit to see more)")


@retries.command("show")
@click.argument("ident")
@queue_option
@click.option("--json", "as_json", is_flag=True)
def retries_show(ident: str, queue: str | None, as_json: bool) -> None:
    """One message waiting for a retry: attempt, next try, its arguments, the last traceback."""
    if _rabbitmq_retries(as_json):
        sys.exit(1)
    with _retry_store() as store:
        found = store.find(ident, selected_queues(queue))
        failures = job_failures_of([found.message_id]).get(found.message_id, [])
        summary = store.summary(found, failures=failures)
    message, traceback = found.shown()
    if as_json:
        click.echo(json.dumps({**summary, "message": message, "traceback": traceback}, indent=2, default=str))
        return
    click.echo(f"queue {found.queue}   redis id {found.id}   {summary['actor']}   attempt {_attempt(summary)}   "
               f"next try {_next_try(summary)}")
    click.echo(json.dumps(message, indent=2, default=str))
    for failure in failures:
        click.echo(f"job_failures: {failure_text(failure)}")
    if traceback:
        click.echo("\ntraceback of the last failed attempt:\n" + traceback.rstrip())
