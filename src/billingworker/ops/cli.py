"""Operator commands, registered on the main CLI group by ``register``: status, dead-letters,
health, metrics. See docs/operations.md."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import click

from ..broker import QUEUES
from ..config import get_config
from .errors import OpsError


def register(main: click.Group) -> None:
    """Add the operator commands (status, dead-letters, health, metrics) to ``main``."""
    for command in (status, dead_letters, health, metrics, outbox):
        main.add_command(command)


# --- status -------------------------------------------------------------------------------------

@click.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@click.option("--runs", default=5, show_default=True, help="How many daily runs to show.")
@click.option("--parked", default=20, show_default=True, help="How many parked clients to list.")
def status(as_json: bool, runs: int, parked: int) -> None:
    """Queues (waiting, delayed, in progress, dead, oldest), live workers, daily runs, parked clients.

    Exits 1 if the broker or the database did not answer (what did answer is still shown).
    """
    from .status import collect_status, render_status

    cfg = get_config()
    data = collect_status(cfg.broker_url, cfg.database_url, now=datetime.now(UTC), runs=runs, parked=parked)
    click.echo(json.dumps(data, indent=2) if as_json else render_status(data))
    if data["errors"]:
        sys.exit(1)


# --- dead letters -------------------------------------------------------------------------------

queue_option = click.option("--queue", "queue", type=click.Choice(QUEUES), default=None,
                            help="Only this queue (default: every queue).")


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages Dramatiq gave up on (Redis only): list, show, requeue, purge.

    A message is named by its redis id (the first column of ``list``) or by its message_id.
    """


@contextmanager
def _dead_letter_store() -> Iterator:
    from redis.exceptions import RedisError

    from .dead_letters import DeadLetters
    from .queues import broker_kind, redis_client, safe_url

    url = get_config().broker_url
    if broker_kind(url) != "redis":
        raise click.ClickException(
            f"dead letters are managed on a Redis broker; {safe_url(url)} is {broker_kind(url)}. On RabbitMQ they "
            "are in the queues billing.XQ and emails.XQ (management UI, rabbitmqadmin).")
    client = redis_client(url)
    try:
        yield DeadLetters(client)
    except RedisError as exc:
        raise click.ClickException(f"Redis at {safe_url(url)}: {exc}") from None
    except OpsError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        client.close()


def _queues(queue: str | None) -> tuple[str, ...]:
    return (queue,) if queue else QUEUES


@dead_letters.command("list")
@queue_option
@click.option("--limit", default=100, show_default=True, help="At most this many per queue, oldest first.")
@click.option("--json", "as_json", is_flag=True)
def dead_letters_list(queue: str | None, limit: int, as_json: bool) -> None:
    """Dead letters: id, actor, age, retries, and why (traceback's last line or job_failures).

    Secrets in the kwargs and the reasons are masked, long values cut.
    """
    from ..domain.redaction import mask_text
    from .dead_letters import ERROR_LIMIT
    from .status import format_age, table

    with _dead_letter_store() as store:
        letters = [letter for q in _queues(queue) for letter in store.list(q, limit=limit)]
        totals = {q: store.count(q) for q in _queues(queue)}
    reasons = _failure_reasons([letter.message_id for letter in letters if not letter.error])
    rows = []
    for letter in letters:
        row = letter.summary()
        row["error"] = row["error"] or mask_text(reasons.get(letter.message_id, ""), ERROR_LIMIT)
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dead letters")
        return
    click.echo(table(["queue", "id", "actor", "died", "retries", "error"],
                     [[r["queue"], r["id"], r["actor"], format_age(r["age_seconds"]) + " ago", str(r["retries"]),
                       r["error"][:100]] for r in rows]))
    for q, total in totals.items():
        shown = sum(1 for r in rows if r["queue"] == q)
        if total > shown:
            click.echo(f"({q}: {shown} of {total} shown; --limit to see more)")


def _failure_reasons(message_ids: list[str]) -> dict[str, str]:
    """Why refused messages were dead-lettered, from job_failures; nothing if the database is away."""
    if not message_ids:
        return {}
    from ..db import get_engine, unit_of_work
    from .runs import failure_reasons

    try:
        with unit_of_work(get_engine()) as session:
            return failure_reasons(session, message_ids)
    except Exception as exc:  # noqa: BLE001 - the list is still useful without the reasons
        click.echo(f"(job_failures not read: {type(exc).__name__})", err=True)
        return {}


@dead_letters.command("show")
@click.argument("ident")
@queue_option
@click.option("--json", "as_json", is_flag=True, help="Only the message JSON (secrets masked, long texts cut).")
def dead_letters_show(ident: str, queue: str | None, as_json: bool) -> None:
    """The message of one dead letter, pretty-printed, and its traceback.

    Secrets (passwords, tokens, card numbers, at any depth) are masked and long texts cut.
    """
    with _dead_letter_store() as store:
        letter = store.find(ident, _queues(queue))
    message, traceback = letter.shown()
    if as_json:
        if traceback is not None and isinstance(message.get("options"), dict):
            message["options"]["traceback"] = traceback
        click.echo(json.dumps(message, indent=2, default=str))
        return
    died = datetime.fromtimestamp(letter.died_at_ms / 1000, UTC)
    click.echo(f"queue {letter.queue}   redis id {letter.id}   died {died:%Y-%m-%d %H:%M:%S} UTC   "
               f"retries {letter.retries}")
    click.echo(json.dumps(message, indent=2, default=str))
    if traceback:
        click.echo("\ntraceback of the last retried attempt:\n" + traceback.rstrip())


def _named(letter) -> str:
    """``actor, message id`` of a dead letter, as the message put them: bounded and masked."""
    summary = letter.summary()
    return f"{summary['actor']}, message {summary['message_id']}"


def _check_selection(idents: tuple[str, ...], all_: bool, queue: str | None, verb: str) -> None:
    if all_ and idents:
        raise click.UsageError(f"{verb}: give message ids or --all, not both")
    if all_ and not queue:
        raise click.UsageError(f"{verb} --all needs --queue ({' or '.join(QUEUES)})")
    if not all_ and not idents:
        raise click.UsageError(f"{verb}: give one or more message ids, or --all --queue Q")


@dead_letters.command("requeue")
@click.argument("idents", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter of --queue.")
@queue_option
def dead_letters_requeue(idents: tuple[str, ...], all_: bool, queue: str | None) -> None:
    """Send dead letters back to their queue as fresh messages (retries 0, same message_id).

    Fix the cause first: a requeued message that fails again is retried and dead-lettered again.
    A dead letter whose payload is not a JSON message stays where it is (exit status 1).
    """
    from .dead_letters import NotRequeueable

    refused = 0
    with _dead_letter_store() as store:
        _check_selection(idents, all_, queue, "requeue")
        if all_:
            new_ids, skipped = store.requeue_all(queue)
            click.echo(f"requeued {len(new_ids)} dead letters to {queue}")
            for letter in skipped:
                click.echo(f"skipped {letter.id}: {letter.decode_error} (show it, then purge it)", err=True)
            return
        for ident in idents:
            letter = store.find(ident, _queues(queue))
            try:
                new_id = store.requeue(letter)
            except NotRequeueable as exc:
                click.echo(f"Error: {exc}", err=True)
                refused += 1
                continue
            if new_id is None:
                click.echo(f"{letter.id}: already gone (purged or requeued meanwhile)")
            else:
                click.echo(f"requeued {letter.id} ({_named(letter)}) to {letter.queue} as {new_id}")
    if refused:
        sys.exit(1)


@dead_letters.command("purge")
@click.argument("idents", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter of --queue.")
@queue_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def dead_letters_purge(idents: tuple[str, ...], all_: bool, queue: str | None, yes: bool) -> None:
    """Drop dead letters for good (asks first, unless --yes)."""
    with _dead_letter_store() as store:
        _check_selection(idents, all_, queue, "purge")
        if all_:
            count = store.count(queue)
            if not count:
                click.echo(f"no dead letters in {queue}")
                return
            if not yes:
                click.confirm(f"Drop all {count} dead letters of {queue} for good?", abort=True)
            click.echo(f"purged {store.purge_all(queue)} dead letters of {queue}")
            return
        letters = [store.find(ident, _queues(queue)) for ident in idents]
        if not yes:
            names = ", ".join(f"{letter.id} ({_named(letter)})" for letter in letters)
            click.confirm(f"Drop {names} for good?", abort=True)
        for letter in letters:
            gone = store.purge(letter)
            click.echo(f"purged {letter.id}" if gone else f"{letter.id}: already gone")


# --- outbox -------------------------------------------------------------------------------------

@click.group()
def outbox() -> None:
    """The email outbox."""


@outbox.command("relay")
def outbox_relay() -> None:
    """Re-enqueue every email whose delivery message was lost (queued a minute after it was written,
    or left `sending` by a dead worker)."""
    from ..actors import relay_outbox

    relay_outbox.send()
    click.echo("relay_outbox enqueued")


# --- health -------------------------------------------------------------------------------------

@click.command()
@click.option("--max-age-hours", type=float, default=26.0, show_default=True,
              help="The last successful daily run must have finished within this many hours.")
@click.option("--no-run-check", is_flag=True, help="Check only that the database and the broker answer.")
@click.option("--json", "as_json", is_flag=True)
def health(max_age_hours: float, no_run_check: bool, as_json: bool) -> None:
    """Exit 0 if the database and the broker answer and the daily run is on time; else 1, with why."""
    from .health import check_health

    cfg = get_config()
    report = check_health(cfg.database_url, cfg.broker_url, now=datetime.now(UTC), run_check=not no_run_check,
                          max_age_hours=max_age_hours)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        for check in report.checks:
            click.echo(f"{'ok  ' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
    sys.exit(0 if report.ok else 1)


# --- metrics ------------------------------------------------------------------------------------

@click.command()
@click.option("--port", type=int, default=None, help="Port to serve /metrics on  [default: 9192]")
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--once", is_flag=True, help="Print the metrics once (Prometheus text format) and exit.")
def metrics(port: int | None, host: str, once: bool) -> None:
    """Serve Prometheus metrics: queues, dead letters, oldest message age, workers, daily run, parked."""
    try:
        from prometheus_client import generate_latest
    except ImportError:
        raise click.ClickException("prometheus-client is not installed (pip install prometheus-client)") from None
    from .metrics import DEFAULT_METRICS_PORT, OpsCollector, make_registry, serve

    cfg = get_config()
    registry = make_registry(OpsCollector(cfg.broker_url, cfg.database_url))
    if once:
        click.echo(generate_latest(registry).decode(), nl=False)
        return
    port = port or DEFAULT_METRICS_PORT
    click.echo(f"serving metrics on http://{host}:{port}/metrics", err=True)
    serve(registry, port, host)
