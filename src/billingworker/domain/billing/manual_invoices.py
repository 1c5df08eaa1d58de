"""Invoices an admin or the client asks for (SPEC §4): invoice selected items, an empty
draft, an add-funds invoice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..cycles import recurs
from ..errors import NotFound, ValidationError
from ..messaging.outbox import QueuedEmail, queue_emails
from ..models import (
    BilledPeriod,
    CancelRequest,
    ClientStatus,
    Invoice,
    InvoiceKind,
    InvoiceStatus,
    ItemType,
)
from ..money import round_money
from ..settings import BillingSettings, load_settings
from .due_invoices import GenerationResult, tax_context, write_plans
from .due_things import THING_TABLES, find_due
from .invoice_plan import ClientInfo, InvoicePlan, PlannedItem, TaxContext, plan_invoices, totals_for
from .invoice_store import lock_clients, write_invoices
from .tax import TaxRules

SELECTABLE_TYPES = (ItemType.SERVICE, ItemType.ADDON, ItemType.DOMAIN, ItemType.BILLABLE)


def locked_client(session: Session, client_id: int) -> ClientInfo:
    """The client's row, locked; refuses unknown, closed and currency-less clients."""
    client = lock_clients(session, [client_id]).get(client_id)
    if client is None:
        raise NotFound("client_id", client_id, "client")
    if client.status == ClientStatus.CLOSED:
        raise ValidationError("client_id", client_id, "is a Closed client and cannot be invoiced")
    if client.currency_id is None:
        raise ValidationError("currency_id", None, "is required to invoice: the client has no currency")
    return client


@dataclass
class SelectedResult:
    invoice_ids: list[int] = field(default_factory=list)
    email_ids: list[int] = field(default_factory=list)
    #: (item type, item id, reason) for every item that was not invoiced.
    refused: list[tuple[str, int, str]] = field(default_factory=list)


def invoice_selected_items(session: Session, client_id: int, items: Sequence[tuple[str, int]], *,
                           as_of: date, queue_email: bool = True) -> SelectedResult:
    """Invoice the next renewal of each selected thing now (SPEC §4), grouped by (due date,
    payment method) whatever the client's separate-invoices flag. A thing already invoiced for
    its next due date (or otherwise not invoiceable) is refused with a reason; the others proceed.
    Locks the client row; the caller commits."""
    for item_type, _ in items:
        if item_type not in SELECTABLE_TYPES:
            raise ValidationError("items.type", item_type, f"is not one of {', '.join(SELECTABLE_TYPES)}")
    client = locked_client(session, client_id)
    settings = load_settings(session)
    wanted = list(dict.fromkeys((t, int(i)) for t, i in items))
    due = find_due(session, [client_id], as_of, settings, only=wanted)
    lines = due.items.get(client_id, [])
    found = {ln.key for ln in lines}
    result = SelectedResult()
    for key in wanted:
        if key not in found:
            result.refused.append((*key, _why_not(session, client_id, key, settings)))
    if lines:
        rules = TaxRules.load(session)
        plans = plan_invoices(client, lines, as_of=as_of, tax=tax_context(rules, client, settings),
                              separate=False, auto_apply_credit=settings.auto_apply_credit)
        gen = GenerationResult(as_of)
        write_plans(session, plans, due, gen, queue_email=queue_email)
        result.invoice_ids, result.email_ids = gen.invoice_ids, gen.email_ids
    return result


def _why_not(session: Session, client_id: int, key: tuple[str, int], settings: BillingSettings) -> str:
    item_type, item_id = key
    table = THING_TABLES[item_type]
    thing = session.get(table, item_id)
    if thing is None or thing.client_id != client_id:
        return f"{item_type} {item_id} does not exist for client {client_id}"
    if item_type == ItemType.BILLABLE:
        return f"billable item {item_id} has nothing left to invoice (invoiced {thing.invoice_count} time(s))"
    if not recurs(thing.billing_cycle):
        return f"{item_type} {item_id} is billed {thing.billing_cycle} and is never invoiced again"
    driving = thing.next_invoice_date if settings.continuous_invoice_generation else thing.next_due_date
    holder = session.execute(
        select(Invoice.number, Invoice.id, Invoice.status).join(BilledPeriod, BilledPeriod.invoice_id == Invoice.id)
        .where(BilledPeriod.item_type == item_type, BilledPeriod.item_id == item_id,
               BilledPeriod.due_date == driving, Invoice.status != InvoiceStatus.CANCELLED)).first()
    if holder is not None:
        return (f"{item_type} {item_id} is already invoiced for its next due date {driving} "
                f"on invoice #{holder.number or holder.id} ({holder.status})")
    if item_type == ItemType.SERVICE and session.execute(
            select(CancelRequest.id).where(CancelRequest.service_id == item_id)).first():
        return f"service {item_id} has a pending cancellation request"
    if driving is None:
        return f"{item_type} {item_id} has no next due date"
    return f"{item_type} {item_id} has status {thing.status}, which cannot be invoiced"


def create_draft_invoice(session: Session, client_id: int, *, as_of: date) -> int:
    """An empty Draft invoice (no number until it is issued, no email). Returns its id."""
    client = locked_client(session, client_id)
    plan = InvoicePlan(client_id=client.id, currency_id=client.currency_id, date_created=as_of, date_due=as_of,
                       payment_method="", items=(), totals=totals_for((), _NO_TAX, client.minor_units),
                       status=InvoiceStatus.DRAFT)
    [stored] = write_invoices(session, [plan], source="job:create_invoice")
    return stored.id


@dataclass(frozen=True)
class AddFundsResult:
    invoice_id: int
    number: int | None
    amount: Decimal
    email_ids: tuple[int, ...]


def create_add_funds_invoice(session: Session, client_id: int, amount: Decimal, *, as_of: date,
                             queue_email: bool = True) -> AddFundsResult:
    """One "Add Funds" line of ``amount`` within the add-funds limits (SPEC §2, §4).

    Its payment credits the balance (see payments.settle_paid_invoices). Locks the client row.
    """
    client = locked_client(session, client_id)
    settings = load_settings(session)
    amount = round_money(amount, client.minor_units)
    if amount < settings.add_funds_minimum:
        raise ValidationError("amount", str(amount), f"is below the add-funds minimum of {settings.add_funds_minimum}")
    if amount > settings.add_funds_maximum:
        raise ValidationError("amount", str(amount), f"is above the add-funds maximum of {settings.add_funds_maximum}")
    if client.credit_balance + amount > settings.add_funds_maximum_balance:
        raise ValidationError(
            "amount", str(amount),
            f"would take the credit balance ({client.credit_balance}) above the add-funds maximum balance of "
            f"{settings.add_funds_maximum_balance}")
    line = PlannedItem(ItemType.ADD_FUNDS, None, "Add Funds", amount, False, None)
    plan = InvoicePlan(client_id=client.id, currency_id=client.currency_id, date_created=as_of, date_due=as_of,
                       payment_method="", items=(line,), totals=totals_for([line], _NO_TAX, client.minor_units),
                       kind=InvoiceKind.ADD_FUNDS)
    [stored] = write_invoices(session, [plan], source="job:create_add_funds_invoice")
    email_ids = queue_emails(session, [QueuedEmail("add_funds_invoice", client.id, {"invoice_id": stored.id},
                                                   f"add_funds_invoice:{stored.id}")]) if queue_email else []
    return AddFundsResult(stored.id, stored.number, amount, tuple(email_ids))


#: Drafts and add-funds invoices carry no tax.
_NO_TAX = TaxContext(None, None, inclusive=False, compound=False)
