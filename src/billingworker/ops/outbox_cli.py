"""``billingworker outbox list|resend|relay`` (docs/operations.md#outbox)."""

from __future__ import annotations

import json
import sys
from datetime import datetime

import click

from .cli_support import ID, MAX_LIMIT, ago, answering, short_json, utc_now

# --- outbox -------------------------------------------------------------------------------------

@click.group()
def outbox() -> None:
    """The email outbox: list what was not delivered, resend it, relay what a crash left behind."""


@outbox.command("list")
@click.option("--status", "statuses", multiple=True, type=click.Choice(("failed", "skipped", "queued", "sending",
                                                                         "sent")),
              help="Only emails in this status (repeatable)  [default: failed and skipped]")
@click.option("--client", "client_id", type=ID, default=None, help="Only this client's emails.")
@click.option("--limit", default=100, show_default=True, type=click.IntRange(1, MAX_LIMIT), help="The most recent N.")
@click.option("--json", "as_json", is_flag=True)
@answering
def outbox_list(statuses: tuple[str, ...], client_id: int | None, limit: int, as_json: bool) -> None:
    """Outbox emails, the most recent first: client, address (masked), template, status, why, ages."""
    from ..db import get_engine, unit_of_work
    from .outbox import UNDELIVERED, count_by_status, list_outbox
    from .tables import Column, print_table

    with unit_of_work(get_engine()) as session:
        rows = list_outbox(session, statuses=statuses or UNDELIVERED, client_id=client_id, limit=limit)
        counts = count_by_status(session)
    if as_json:
        click.echo(json.dumps({"counts": counts, "emails": [r.as_dict() for r in rows]}, indent=2, default=str))
        return
    click.echo("outbox: " + ", ".join(f"{status} {n}" for status, n in counts.items()))
    if not rows:
        of_client = f" of client {client_id}" if client_id else ""
        click.echo(f"no {' or '.join(statuses or UNDELIVERED)} email{of_client}")
        return
    now = utc_now()
    right = {name: Column(name, justify="right") for name in ("id", "client", "attempts", "queued", "updated")}
    print_table(None, [right["id"], right["client"], "to", "template", "about", "status", right["attempts"],
                       "error / reason", right["queued"], right["updated"]],
                [[r.id, r.client_id, r.to, r.template, short_json(r.context, 40), r.status, r.attempts, r.error[:100],
                  _since(now, r.created_at), _since(now, r.updated_at)] for r in rows])


def _since(now: datetime, moment: datetime | None) -> str:
    return "-" if moment is None else ago(max(0.0, (now - moment).total_seconds()))


@outbox.command("resend")
@click.argument("email_ids", nargs=-1, type=ID)
@click.option("--all-failed", is_flag=True, help="Every failed email (of --client, if given).")
@click.option("--client", "client_id", type=ID, default=None, help="With --all-failed.")
@answering
def outbox_resend(email_ids: tuple[int, ...], all_failed: bool, client_id: int | None) -> None:
    """Put failed (or skipped) emails back in the queue and enqueue their delivery.

    Each goes back to queued under a row lock, is enqueued after the commit and delivered like
    any queued email: checked again that it is still wanted (a reminder whose invoice was paid
    is skipped, not sent). A sent, sending or queued email is left alone: nothing is sent twice.
    --all-failed takes failed emails only; a skipped one is resent by its id.
    If the broker does not answer after the commit, the emails stay queued and the scheduler's
    relay delivers them once it answers: a warning says so on stderr, exit status 0.
    """
    from ..db import get_engine
    from .outbox import resend

    if all_failed == bool(email_ids):
        raise click.UsageError("resend: give email ids or --all-failed (one of them)")
    if client_id is not None and not all_failed:
        raise click.UsageError("resend: --client goes with --all-failed")
    done = resend(get_engine(), now=utc_now(), email_ids=email_ids, all_failed=all_failed, client_id=client_id)
    if done.warning:
        # The resend is done (the rows are queued); only their delivery waits for the relay: exit 0.
        click.echo(f"Warning: {done.warning}", err=True)
    if done.queued:
        click.echo(f"resent {len(done.queued)} email(s): " + ", ".join(str(i) for i in done.queued[:50])
                   + (" ..." if len(done.queued) > 50 else ""))
    elif all_failed:
        click.echo("no failed email to resend")
    for email_id, state in done.left.items():
        click.echo(f"email {email_id}: not resent ({'no such email' if state == 'missing' else 'it is ' + state})",
                   err=True)
    if any(state == "missing" for state in done.left.values()):
        sys.exit(1)


@outbox.command("relay")
@answering
def outbox_relay() -> None:
    """Re-enqueue every email whose delivery message was lost (queued a minute after it was written,
    or left `sending` by a dead worker)."""
    from ..actors import relay_outbox
    from ..bootstrap import current_app

    current_app()  # the jobs bound to the broker of BROKER_URL
    relay_outbox.send()  # a broker that does not answer: a clear error (``answering``)
    click.echo("relay_outbox enqueued")
