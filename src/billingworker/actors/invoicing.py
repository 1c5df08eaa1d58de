"""Invoicing jobs (docs/jobs.md): generate due invoices, invoice selected items, create an
invoice, create an add-funds invoice. Thin: validate, one unit of work, commit, then enqueue."""

from __future__ import annotations

from datetime import date
from functools import partial

from ..domain.billing.due_invoices import generate_for_clients
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
from .base import current_message_id, job, once_per_message, receipt_key
from .batches import fan_out, run_for_clients
from .emails import delivery_messages
from .unit_of_work import UnitOfWork


def _today(as_of: date | None) -> date:
    return as_of or runtime().clock.today()


@job()
@argument_rules(client_id=parse_optional_id, as_of=parse_date, send_email=parse_bool)
def generate_due_invoices(client_id=None, as_of=None, send_email=True):
    """Invoice what is due for one client (even a parked one: it is named), or fan out over every
    client that is neither Closed nor parked, as the daily run does (``batches.fan_out``)."""
    client_id = parse_optional_id("client_id", client_id)
    day = _today(parse_date("as_of", as_of))
    send_email = parse_bool("send_email", send_email)
    if client_id is None:
        # send_email only when false: a worker of the release before, met during a rolling
        # upgrade, takes run_task_batch without it.
        return fan_out("generate_due_invoices", day, **({} if send_email else {"send_email": False}))
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        if work.session.get(Client, client_id) is None:
            raise NotFound("client_id", client_id, "client")
        result = generate_for_clients(work.session, [client_id], day, queue_email=send_email)
        if result.failures:
            failure = result.failures[0]
            raise ValidationError(failure.field, failure.value, failure.reason)
        work.send_after_commit(*delivery_messages(result.email_ids))
        work.commit()
    return {"invoices_created": result.invoices_created, "items": result.items_invoiced,
            "invoice_ids": result.invoice_ids, "as_of": day.isoformat()}


@job()
@argument_rules(client_ids=partial(parse_id_list, max_length=MAX_BATCH_CLIENTS), as_of=parse_date,
                send_email=parse_bool)
def generate_due_invoices_batch(client_ids, as_of, send_email=True):
    """A batch of named clients (internal, but a stable contract: see docs/jobs.md; the fan-out
    now sends ``run_task_batch``). The one pipeline: the daily run's generation task."""
    ids = parse_id_list("client_ids", client_ids, max_length=MAX_BATCH_CLIENTS)
    day = parse_date("as_of", as_of)
    if day is None:
        raise ValidationError("as_of", as_of, "is required for a batch")
    result = run_for_clients("generate_due_invoices", ids, day, queue_email=parse_bool("send_email", send_email))
    return {"clients": result.clients, "invoices_created": result.invoices_created, "failures": len(result.failures)}


@job()
@argument_rules(client_id=parse_id, items=partial(parse_items, allowed=SELECTABLE_TYPES),
                as_of=parse_date, send_email=parse_bool)
def invoice_selected_items(client_id, items, as_of=None, send_email=True):
    client_id = parse_id("client_id", client_id)
    wanted = parse_items("items", items, SELECTABLE_TYPES)
    day = _today(parse_date("as_of", as_of))
    send_email = parse_bool("send_email", send_email)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:

        def invoice() -> dict:
            result = invoice_items(work.session, client_id, wanted, as_of=day, queue_email=send_email)
            record_failures(work.session, [_refusal(client_id, t, i, why) for t, i, why in result.refused],
                            actor="invoice_selected_items", message_id=current_message_id(), now=rt.clock.now(),
                            error="Refused")
            work.send_after_commit(*delivery_messages(result.email_ids))
            return {"invoice_ids": result.invoice_ids,
                    "refused": [{"type": t, "id": i, "reason": why} for t, i, why in result.refused]}

        # A redelivery repeats the first answer: it would invoice nothing anyway (billed_periods),
        # but it would record every thing it invoiced as "refused: already invoiced".
        answer = once_per_message(work.session, "invoice_selected_items", invoice)
        work.commit()
    return answer


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
    with UnitOfWork(rt.engine) as work:
        result, _ = run_once(work.session, key, "create_invoice", lambda: {
            "invoice_id": create_draft_invoice(work.session, client_id, as_of=rt.clock.today())})
        work.commit()
    return result


@job()
@argument_rules(client_id=parse_id, amount=parse_amount)
def create_add_funds_invoice(client_id, amount, request_id=None):
    """An "Add Funds" invoice within the installation's limits; run once per message or ``request_id``."""
    client_id = parse_id("client_id", client_id)
    key = receipt_key("create_add_funds_invoice", request_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        minor_units = work.session.query(Currency.minor_units).join(Client, Client.currency_id == Currency.id).filter(
            Client.id == client_id).scalar()
        value = parse_money("amount", amount, minor_units=minor_units if minor_units is not None else 2)

        def invoice():
            done = add_funds(work.session, client_id, value, as_of=rt.clock.today())
            work.send_after_commit(*delivery_messages(done.email_ids))
            return {"invoice_id": done.invoice_id, "number": done.number, "amount": str(done.amount)}

        # A redelivery finds the receipt: the first answer again, nothing sent twice.
        result, _ = run_once(work.session, key, "create_add_funds_invoice", invoice)
        work.commit()
    return result
