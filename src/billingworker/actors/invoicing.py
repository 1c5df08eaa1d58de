"""Invoicing jobs (docs/jobs.md): generate due invoices, invoice selected items, create an
invoice, create an add-funds invoice. Thin: validate, one unit of work, commit, then enqueue."""

from __future__ import annotations

from datetime import date
from functools import partial

from ..db import unit_of_work
from ..domain.billing.due_invoices import client_batches, generate_for_clients
from ..domain.billing.manual_invoices import (
    SELECTABLE_TYPES,
    create_draft_invoice,
)
from ..domain.billing.manual_invoices import (
    create_add_funds_invoice as add_funds,
)
from ..domain.billing.manual_invoices import (
    invoice_selected_items as invoice_items,
)
from ..domain.errors import NotFound, ValidationError
from ..domain.failures import record_failures
from ..domain.models import Client, Currency
from ..domain.receipts import run_once
from ..runtime import runtime
from .arguments import (
    MAX_BATCH_CLIENTS,
    argument_rules,
    parse_amount,
    parse_bool,
    parse_date,
    parse_id,
    parse_id_list,
    parse_items,
    parse_money,
    parse_optional_id,
)
from .base import current_message_id, job, receipt_key
from .emails import send_emails


def _today(as_of: date | None) -> date:
    return as_of or runtime().clock.today()


@job()
@argument_rules(client_id=parse_optional_id, as_of=parse_date, send_email=parse_bool)
def generate_due_invoices(client_id=None, as_of=None, send_email=True):
    """Invoice what is due for one client, or fan out over every client in batches."""
    client_id = parse_optional_id("client_id", client_id)
    day = _today(parse_date("as_of", as_of))
    send_email = parse_bool("send_email", send_email)
    rt = runtime()
    if client_id is None:
        # Fan out: the day is fixed now, so a batch retried after midnight bills the same day.
        batches = 0
        with unit_of_work(rt.engine) as session:
            for ids in client_batches(session, rt.batch_size):
                generate_due_invoices_batch.send(client_ids=ids, as_of=day.isoformat(), send_email=send_email)
                batches += 1
        return {"batches": batches, "as_of": day.isoformat()}
    with unit_of_work(rt.engine) as session:
        if session.get(Client, client_id) is None:
            raise NotFound("client_id", client_id, "client")
        result = generate_for_clients(session, [client_id], day, queue_email=send_email)
        if result.failures:
            failure = result.failures[0]
            raise ValidationError(failure.field, failure.value, failure.reason)
        session.commit()
    send_emails(result.email_ids)
    return {"invoices_created": result.invoices_created, "items": result.items_invoiced,
            "invoice_ids": result.invoice_ids, "as_of": day.isoformat()}


@job()
@argument_rules(client_ids=partial(parse_id_list, max_length=MAX_BATCH_CLIENTS), as_of=parse_date,
                send_email=parse_bool)
def generate_due_invoices_batch(client_ids, as_of, send_email=True):
    """One batch of the fan-out (internal, but a stable contract: see docs/jobs.md)."""
    ids = parse_id_list("client_ids", client_ids, max_length=MAX_BATCH_CLIENTS)
    day = parse_date("as_of", as_of)
    if day is None:
        raise ValidationError("as_of", as_of, "is required for a batch")
    send_email = parse_bool("send_email", send_email)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        result = generate_for_clients(session, ids, day, queue_email=send_email)
        record_failures(session, result.failures, actor="generate_due_invoices", message_id=current_message_id(),
                        now=rt.clock.now())
        session.commit()
    send_emails(result.email_ids)
    return {"clients": result.clients_processed, "invoices_created": result.invoices_created,
            "items": result.items_invoiced, "failures": len(result.failures)}


@job()
@argument_rules(client_id=parse_id, items=partial(parse_items, allowed=SELECTABLE_TYPES),
                as_of=parse_date, send_email=parse_bool)
def invoice_selected_items(client_id, items, as_of=None, send_email=True):
    client_id = parse_id("client_id", client_id)
    wanted = parse_items("items", items, SELECTABLE_TYPES)
    day = _today(parse_date("as_of", as_of))
    send_email = parse_bool("send_email", send_email)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        result = invoice_items(session, client_id, wanted, as_of=day, queue_email=send_email)
        record_failures(session, [_refusal(client_id, t, i, why) for t, i, why in result.refused],
                        actor="invoice_selected_items", message_id=current_message_id(), now=rt.clock.now(),
                        error="Refused")
        session.commit()
    send_emails(result.email_ids)
    return {"invoice_ids": result.invoice_ids,
            "refused": [{"type": t, "id": i, "reason": why} for t, i, why in result.refused]}


def _refusal(client_id: int, item_type: str, item_id: int, why: str):
    from ..domain.failures import ClientFailure

    return ClientFailure(client_id, f"items[{item_type}:{item_id}]", None, why)


@job()
@argument_rules(client_id=parse_id)
def create_invoice(client_id, request_id=None):
    """An empty Draft invoice; run once per message (or per ``request_id``)."""
    client_id = parse_id("client_id", client_id)
    key = receipt_key("create_invoice", request_id)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        result, _ = run_once(session, key, "create_invoice", lambda: {
            "invoice_id": create_draft_invoice(session, client_id, as_of=rt.clock.today())})
        session.commit()
    return result


@job()
@argument_rules(client_id=parse_id, amount=parse_amount)
def create_add_funds_invoice(client_id, amount, request_id=None):
    """An "Add Funds" invoice within the installation's limits; run once per message or ``request_id``."""
    client_id = parse_id("client_id", client_id)
    key = receipt_key("create_add_funds_invoice", request_id)
    rt = runtime()
    emails: list[int] = []
    with unit_of_work(rt.engine) as session:
        minor_units = session.query(Currency.minor_units).join(Client, Client.currency_id == Currency.id).filter(
            Client.id == client_id).scalar()
        value = parse_money("amount", amount, minor_units=minor_units if minor_units is not None else 2)

        def work():
            done = add_funds(session, client_id, value, as_of=rt.clock.today())
            emails.extend(done.email_ids)
            return {"invoice_id": done.invoice_id, "number": done.number, "amount": str(done.amount)}

        result, _ = run_once(session, key, "create_add_funds_invoice", work)
        session.commit()
    send_emails(emails)
    return result
