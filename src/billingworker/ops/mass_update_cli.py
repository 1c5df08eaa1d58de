"""``billingworker mass-update``: what a mass update (SPEC §9) of one client would do, before it is
done: each thing's changes, the prorata lines and invoice, the module commands. Then, after a
confirmation (or ``--yes``), the ``mass_update`` job is enqueued with the same arguments; with
``--preview`` nothing is sent and the exact ``billingworker enqueue`` command is printed instead.

The preview is the update's own plan (``domain.accounts.mass_update_preview``) in a transaction
that is rolled back; the arguments pass the job's own checks first (``ops.enqueue_check``), so
what the preview refuses the job refuses, and the other way round. The job runs on the day the
worker takes it: a preview of today is the update of today.
"""

from __future__ import annotations

import json
import shlex
import uuid
from decimal import Decimal
from typing import Any

import click

from .cli_support import ID, answering
from .tables import Column, InputRefused, console, money_by_currency, print_json, print_table

JOB = "mass_update"


@click.command("mass-update")
@click.argument("client_id", type=ID)
@click.option("--item", "items", multiple=True, required=True, metavar="TYPE:ID",
              help="A thing of the client: service:12, addon:3 or domain:7 (repeat it, or separate by commas).")
@click.option("--set", "assignments", multiple=True, required=True, metavar="NAME=VALUE",
              help="A change, as the job's `changes` takes it: status=Suspended, next_due_date=2026-02-06, "
                   "recurring_amount=12.00, billing_cycle=Annually, payment_method=paypal, "
                   "override_auto_suspend=true, module_command=suspend, 'module_params={\"package\": \"gold\"}'.")
@click.option("--prorata", is_flag=True, help="Invoice the prorata of a new next_due_date (create_prorata_invoice).")
@click.option("--no-email", is_flag=True,
              help="No \"invoice created\" email for the prorata invoice (send_email=false).")
@click.option("--preview", is_flag=True, help="Only show what it would do, and the command that does it: "
                                              "nothing is written or sent.")
@click.option("--yes", is_flag=True, help="Enqueue the job without asking.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document, for scripts (without --preview: needs --yes).")
@answering
def mass_update(client_id: int, items: tuple[str, ...], assignments: tuple[str, ...], prorata: bool,
                no_email: bool, preview: bool, yes: bool, as_json: bool) -> None:
    """Preview a mass update of CLIENT_ID's things, then enqueue it (after a yes).

    \b
    billingworker mass-update 12 --item service:7 --item addon:3 --set next_due_date=2026-02-06 --prorata --preview
    billingworker mass-update 12 --item service:7 --set status=Suspended --set module_command=suspend --yes

    Bad input is refused (exit status 2) as the job would refuse it, and nothing is sent.
    """
    from ..actors.arguments import check_characters
    from ..bootstrap import current_app
    from ..clock import SystemClock
    from ..config import get_config
    from ..db import get_engine, unit_of_work
    from ..domain.accounts.mass_update_preview import preview_mass_update
    from ..domain.errors import ValidationError
    from .enqueue_check import MessageRefused, check_message, find_job, parse_assignments

    if as_json and not preview and not yes:
        raise InputRefused("--json without --preview enqueues the job: add --yes (a script cannot answer a question)")
    kwargs: dict[str, Any] = {"client_id": client_id, "items": _items(items)}
    try:
        kwargs["changes"] = parse_assignments(assignments)
        for name, value in kwargs["changes"].items():
            check_characters(f"changes.{name}", value)
        if prorata:
            kwargs["create_prorata_invoice"] = True
        if no_email:
            kwargs["send_email"] = False
        # Run once per request: the printed command, sent twice, updates once.
        kwargs["request_id"] = f"cli-{uuid.uuid4().hex}"
        job = find_job(current_app().broker, JOB)
        check_message(job, kwargs)
    except MessageRefused as exc:
        raise InputRefused(f"{exc}; nothing was done") from None
    except ValidationError as exc:
        raise InputRefused(f"{exc}; nothing was done") from None

    today = SystemClock(get_config().time_zone).today()
    try:
        with unit_of_work(get_engine()) as session:
            shown = preview_mass_update(session, client_id, kwargs["items"], kwargs["changes"],
                                        create_prorata_invoice=prorata, as_of=today)
            session.rollback()
    except ValidationError as exc:  # NotFound too
        raise InputRefused(f"{exc}; nothing was done") from None
    command = enqueue_command(kwargs)

    if as_json:
        document: dict[str, Any] = {"as_of": today.isoformat(), "preview": shown.as_dict(), "enqueue": command}
        if not preview:
            document["message_id"] = job.send(**kwargs).message_id
        print_json(document)
        return
    render(shown.as_dict(), today.isoformat())
    if preview:
        click.echo("\nNothing was written or sent. To run this update:")
        click.echo(f"  {command}")
        return
    if not yes:
        click.confirm("\nEnqueue this mass update?", default=False, abort=True)
    message = job.send(**kwargs)
    click.echo(f"enqueued {JOB} as message {message.message_id} (request_id {kwargs['request_id']})")


def _items(specs: tuple[str, ...]) -> list[dict[str, Any]]:
    """``service:7`` words (or ``service:7,addon:3``) as the job's items: ``{"type", "id"}``."""
    out = []
    for spec in (part.strip() for word in specs for part in word.split(",") if part.strip()):
        kind, sep, number = spec.partition(":")
        if not sep or not number.strip().isdigit() or len(number.strip()) > 10:
            raise InputRefused(f"--item: {spec!r} is not TYPE:ID (e.g. service:12); nothing was done")
        out.append({"type": kind.strip(), "id": int(number)})
    return out


def enqueue_command(kwargs: dict[str, Any]) -> str:
    """The ``billingworker enqueue`` command that sends the job with ``kwargs``, shell-quoted."""
    words = ["billingworker", "enqueue", JOB]
    for name, value in kwargs.items():
        text = value if isinstance(value, str) else json.dumps(value)
        words.append(f"{name}={text}")
    return " ".join(shlex.quote(w) for w in words)


def render(data: dict[str, Any], day: str) -> None:
    """The preview as tables: changes, prorata lines, the invoice, module commands."""
    out = console()
    code = data["currency"]
    out.print(f"Mass update of client {data['client_id']}, as of {day}: a preview, nothing written")
    rows = [[f"{u['type']} {u['id']}", u["label"], name, change["before"], change["after"]]
            for u in data["updates"] for name, change in u["changes"].items()]
    if rows:
        print_table("Changes", ["thing", "label", "field", "before", "after"], rows, out=out)
    else:
        out.print("Changes: none (every field already has its new value)")
    if data["prorata_items"]:
        print_table("Prorata lines", ["thing", "description", "days", "taxed",
                                      Column("amount", justify="right")],
                    [[f"{ln['type']} {ln['id']}", ln["description"], ln["days"], ln["taxed"], ln["amount"]]
                     for ln in data["prorata_items"]], out=out)
        out.print(f"Prorata total: {money_by_currency([(code, data['prorata_total'])])}")
    inv = data["invoice"]
    if inv is not None:
        print_table("Prorata invoice", ["created", "due", "payment method", "status",
                                        *(Column(c, justify="right") for c in ("subtotal", "tax", "total",
                                                                               "credit applied", "balance due"))],
                    [[inv["date_created"], inv["date_due"], inv["payment_method"], inv["status"],
                      *(money_by_currency([(code, inv[k])]) for k in ("subtotal", "tax1", "total",
                                                                      "credit_applied", "balance_due"))]],
                    out=out)
        if Decimal(inv["tax2"]) != 0:
            out.print(f"Level 2 tax: {money_by_currency([(code, inv['tax2'])])}")
    elif data["prorata_items"]:
        out.print("No invoice: the prorata sum is not positive (no invoice and no credit).")
    if data["module_commands"]:
        print_table("Module commands", ["thing", "command"],
                    [[f"{c['type']} {c['id']}", c["command"]] for c in data["module_commands"]], out=out)
