"""``billingworker dead-letters list|show|requeue|purge`` (docs/operations.md#dead-letters)."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from ..queue_names import QUEUES
from .cli_support import (
    MAX_LIMIT,
    ago,
    id_column,
    job_failures_of,
    json_error,
    queue_option,
    redis_store,
    selected_queues,
    short_json,
)
from .errors import OpsError
from .runs import failure_text


@click.group("dead-letters")
def dead_letters() -> None:
    """Messages Dramatiq gave up on (Redis only): list, show, requeue, purge.

    A message is named by its redis id (the first column of ``list``) or by its message_id.
    """



def _dead_letter_store():
    from .dead_letters import DeadLetters

    return redis_store(DeadLetters, "dead letters", "On RabbitMQ they are in the queues billing.XQ and emails.XQ "
                        "(management UI, rabbitmqadmin).")



@dead_letters.command("list")
@queue_option
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, MAX_LIMIT),
              help="At most this many per queue, oldest first.")
@click.option("--json", "as_json", is_flag=True)
def dead_letters_list(queue: str | None, limit: int, as_json: bool) -> None:
    """Dead letters: id, actor, age, retries, and why (traceback's last line or job_failures).

    Secrets in the kwargs and the reasons are masked, long values cut.
    """
    from ..domain.redaction import mask_text
    from .dead_letters import ERROR_LIMIT
    from .tables import Column, print_table

    with json_error(as_json), _dead_letter_store() as store:
        letters = [letter for q in selected_queues(queue) for letter in store.list(q, limit=limit)]
        totals = {q: store.count(q) for q in selected_queues(queue)}
    failures = job_failures_of([letter.message_id for letter in letters])
    rows = []
    for letter in letters:
        row = letter.summary()
        found = failures.get(letter.message_id, [])
        row["failures"] = found
        row["error"] = row["error"] or (mask_text(failure_text(found[-1]), ERROR_LIMIT) if found else "")
        rows.append(row)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no dead letters")
        return
    print_table(None, ["queue", id_column(), "actor", Column("died", justify="right"),
                       Column("retries", justify="right"), "arguments", "error"],
                [[r["queue"], r["id"], r["actor"], ago(r["age_seconds"]), r["retries"], short_json(r["arguments"]),
                  r["error"][:100]] for r in rows])
    for q, total in totals.items():
        shown = sum(1 for r in rows if r["queue"] == q)
        if total > shown:
            click.echo(f"({q}: {shown} of {total} shown; --limit to see more)")


@dead_letters.command("show")
@click.argument("ident")
@queue_option
@click.option("--json", "as_json", is_flag=True,
              help="The message JSON (secrets masked, long texts cut), with its job_failures rows.")
def dead_letters_show(ident: str, queue: str | None, as_json: bool) -> None:
    """The message of one dead letter, pretty-printed, why it was refused (job_failures) and its traceback.

    Secrets (passwords, tokens, card numbers, at any depth) are masked and long texts cut.
    """
    from ..domain.redaction import mask
    from .dead_letters import SHOWN_TEXT_LIMIT, refusal
    from .tables import print_table

    with _dead_letter_store() as store:
        letter = store.find(ident, selected_queues(queue))
    message, traceback = letter.shown()
    # Every argument by name (the positional ones named by the job's signature), masked.
    arguments = mask(letter.arguments(), text_limit=SHOWN_TEXT_LIMIT)
    failures = job_failures_of([letter.message_id]).get(letter.message_id, [])
    if as_json:
        message["arguments"] = arguments
        if traceback is not None and isinstance(message.get("options"), dict):
            message["options"]["traceback"] = traceback
        message["job_failures"] = failures
        message["refusal"] = refusal(letter, failures)
        click.echo(json.dumps(message, indent=2, default=str))
        return
    died = datetime.fromtimestamp(letter.died_at_ms / 1000, UTC)
    click.echo(f"queue {letter.queue}   redis id {letter.id}   died {died:%Y-%m-%d %H:%M:%S} UTC   "
               f"retries {letter.retries}")
    click.echo("arguments " + json.dumps(arguments, default=str))
    click.echo(json.dumps(message, indent=2, default=str))
    if failures:
        click.echo("")
        print_table("Refused (job_failures)", ["error", "field", "reason", "client", "at"],
                    [[f["error"], f["field"] or "-", f["reason"], f["client_id"], (f["created_at"] or "")[:19]]
                     for f in failures])
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


def _parse_changes(assignments: tuple[str, ...]) -> dict[str, Any]:
    """``--set NAME=VALUE`` as ``enqueue`` reads its arguments: VALUE is JSON, else a string."""
    from .enqueue_check import MessageRefused, parse_assignments

    try:
        return parse_assignments(assignments)
    except MessageRefused as exc:
        raise click.BadParameter(str(exc), param_hint="--set") from None


@dead_letters.command("requeue")
@click.argument("idents", nargs=-1)
@click.option("--all", "all_", is_flag=True, help="Every dead letter of --queue.")
@queue_option
@click.option("--set", "assignments", multiple=True, metavar="NAME=VALUE",
              help="Correct (or add) a keyword argument before requeueing; VALUE is JSON as for `enqueue`. Repeatable.")
@click.option("--yes", is_flag=True, help="Do not ask before requeueing messages that died of bad input.")
def dead_letters_requeue(idents: tuple[str, ...], all_: bool, queue: str | None, assignments: tuple[str, ...],
                         yes: bool) -> None:
    """Send dead letters back to their queue as fresh messages (retries 0, same message_id).

    Fix the cause first: a requeued message that fails again is retried and dead-lettered again.
    A message refused for bad input (job_failures) and requeued unchanged dies again: the
    command says so and asks first (--yes: does not ask); correct it with --set NAME=VALUE.
    A dead letter whose payload is not a JSON message stays where it is (exit status 1).
    """
    from .dead_letters import NotRequeueable, check_correction, refusal

    changes = _parse_changes(assignments)
    if changes and all_:
        raise click.UsageError("requeue --set corrects named messages, not --all")
    refused = 0
    with _dead_letter_store() as store:
        _check_selection(idents, all_, queue, "requeue")
        if all_:
            _requeue_all(store, queue, yes)
            return
        letters = [store.find(ident, selected_queues(queue)) for ident in idents]
        failures = job_failures_of([letter.message_id for letter in letters])
        doomed = []
        for letter in letters:
            if changes:
                try:
                    check_correction(letter, changes)
                except OpsError as exc:
                    raise click.ClickException(f"{letter.id} ({_named(letter)}): {exc}") from None
            elif (reason := refusal(letter, failures.get(letter.message_id, []))) is not None:
                doomed.append(letter)
                click.echo(f"Warning: {letter.id} ({_named(letter)}) died of bad input ({reason}); requeued "
                           "unchanged it will die again (correct it with --set NAME=VALUE).", err=True)
        if doomed and not yes:
            click.confirm(f"Requeue {len(doomed)} message(s) that will die again?", abort=True, err=True)
        for letter in letters:
            try:
                new_id = store.requeue_with(letter, changes)
            except NotRequeueable as exc:
                click.echo(f"Error: {exc}", err=True)
                refused += 1
                continue
            if new_id is None:
                click.echo(f"{letter.id}: already gone (purged or requeued meanwhile)")
            else:
                corrected = f" with {', '.join(sorted(changes))} corrected" if changes else ""
                click.echo(f"requeued {letter.id} ({_named(letter)}) to {letter.queue} as {new_id}{corrected}")
    if refused:
        sys.exit(1)


def _requeue_all(store, queue: str, yes: bool) -> None:
    """``requeue --all``: a warning (and a question) for the letters that died of bad input, then
    each letter requeued under a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from .dead_letters import refusal
    from .tables import console

    letters = store.list(queue)
    if not letters:
        click.echo(f"no dead letters in {queue}")
        return
    failures = job_failures_of([letter.message_id for letter in letters])
    doomed = sum(1 for letter in letters if refusal(letter, failures.get(letter.message_id, [])) is not None)
    if doomed:
        click.echo(f"Warning: {doomed} of the {len(letters)} dead letters of {queue} died of bad input "
                   "(`dead-letters list` says why); requeued unchanged they will die again.", err=True)
        if not yes:
            click.confirm(f"Requeue all {len(letters)}?", abort=True, err=True)
    with Progress(TextColumn("requeueing {task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console(stderr=True), transient=False) as progress:
        task = progress.add_task(queue, total=len(letters))
        new_ids, skipped = store.requeue_all(queue, letters=letters, progress=lambda _: progress.advance(task))
    click.echo(f"requeued {len(new_ids)} dead letters to {queue}")
    for letter in skipped:
        click.echo(f"skipped {letter.id}: {letter.decode_error} (show it, then purge it)", err=True)


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
        letters = [store.find(ident, selected_queues(queue)) for ident in idents]
        if not yes:
            names = ", ".join(f"{letter.id} ({_named(letter)})" for letter in letters)
            click.confirm(f"Drop {names} for good?", abort=True)
        for letter in letters:
            gone = store.purge(letter)
            click.echo(f"purged {letter.id}" if gone else f"{letter.id}: already gone")
