"""Payments (SPEC §8): record money in, settle invoices, advance what they billed.

``apply_payment`` is idempotent per (gateway, transaction id): the unique index on
``transactions`` and the invoice row lock make a payment reported twice count once. Money
is never refused: a payment the invoice cannot take (already paid, cancelled, overpaid)
becomes credit on the client's account, with a credit-history line saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import exists, select, tuple_
from sqlalchemy.orm import Session

from ...db import for_update
from ...store.arrays import among
from ...store.bulk import insert_rows_returning_ids, update_rows
from ..billing.due_things import THING_TABLES
from ..cycles import next_due_date
from ..errors import Conflict, NotFound
from ..messaging.outbox import QueuedEmail, queue_emails
from ..models import (
    BilledPeriod,
    Client,
    Invoice,
    InvoiceItem,
    InvoiceKind,
    InvoiceStatus,
    ItemType,
    Transaction,
)
from ..money import ZERO
from .credit import change_credit

#: Statuses in which an invoice still takes payments.
PAYABLE = (InvoiceStatus.UNPAID, InvoiceStatus.PAYMENT_PENDING, InvoiceStatus.COLLECTIONS)
#: At most this many periods are advanced in one settlement (a guard against bad data loops).
MAX_PERIODS_PER_SETTLEMENT = 120


@dataclass(frozen=True)
class PaymentResult:
    invoice_id: int
    transaction_row_id: int | None
    #: recorded | duplicate
    outcome: str
    invoice_status: str
    balance_due: Decimal
    credited: Decimal = ZERO
    email_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PaymentRequest:
    """One payment reported by a gateway: ``amount`` (and ``fees``) for ``invoice_id``."""

    invoice_id: int
    amount: Decimal
    gateway: str
    transaction_id: str
    fees: Decimal = ZERO


def apply_payment(
    session: Session,
    invoice_id: int,
    amount: Decimal,
    *,
    gateway: str,
    transaction_id: str,
    fees: Decimal = ZERO,
    as_of: date,
    now: datetime,
    queue_email: bool = True,
) -> PaymentResult:
    """Record a payment of ``amount`` on ``invoice_id``; the caller commits.

    Locks the client row, then the invoice row. A (gateway, transaction_id) already recorded
    returns ``outcome="duplicate"`` and changes nothing.
    """
    [result] = apply_payments(session, [PaymentRequest(invoice_id, amount, gateway, transaction_id, fees)],
                              as_of=as_of, now=now, queue_email=queue_email)
    return result


def apply_payments(session: Session, requests: Sequence[PaymentRequest], *, as_of: date, now: datetime,
                   queue_email: bool = True) -> list[PaymentResult]:
    """Record several payments in the caller's transaction, in order; one result per request.

    The same rules as ``apply_payment``, set-wise (a card-capture batch records a hundred
    answers with a dozen statements): locks the clients, then the invoices (each in id order, so
    two batches never deadlock). A (gateway, transaction_id) already recorded, or repeated within
    ``requests``, is a ``duplicate``; one recorded for another invoice raises ``Conflict`` and the
    caller rolls everything back. Several payments of one invoice apply one after the other.
    """
    if not requests:
        return []
    invoice_ids = sorted({r.invoice_id for r in requests})
    owners = dict(session.execute(select(Invoice.id, Invoice.client_id)
                                  .where(among(session, Invoice.id, invoice_ids))).all())
    for request in requests:
        if request.invoice_id not in owners:
            raise NotFound("invoice_id", request.invoice_id, "invoice")
    session.execute(for_update(select(Client.id).where(among(session, Client.id, sorted(set(owners.values()))))
                               .order_by(Client.id))).all()
    invoices = {inv.id: inv for inv in session.execute(for_update(
        select(Invoice).where(among(session, Invoice.id, invoice_ids)).order_by(Invoice.id))).scalars()}

    keys = sorted({(r.gateway, r.transaction_id) for r in requests})
    recorded: dict[tuple[str, str], tuple[int | None, int | None]] = {
        (row.gateway, row.transaction_id): (row.id, row.invoice_id) for row in session.execute(
            select(Transaction.id, Transaction.invoice_id, Transaction.gateway, Transaction.transaction_id)
            .where(tuple_(Transaction.gateway, Transaction.transaction_id).in_(keys)))}

    # Decide every request in order, on the locked rows; write the transactions in one go after.
    outcomes: list[dict] = []
    new_transactions: list[dict] = []
    credits: list[tuple[int, Decimal, str, int, str]] = []
    newly_paid: list[int] = []
    for request in requests:
        invoice = invoices[request.invoice_id]
        key = (request.gateway, request.transaction_id)
        if key in recorded:
            txn_row, txn_invoice = recorded[key]
            if txn_invoice not in (request.invoice_id, None):
                # The same gateway transaction reported for another invoice: never treat it as paid here.
                raise Conflict(f"transaction_id: {request.transaction_id!r} of gateway {request.gateway!r} is "
                               f"already recorded for invoice id {txn_invoice}, not {request.invoice_id}")
            outcomes.append({"request": request, "outcome": "duplicate", "key": key, "txn_row": txn_row,
                             "status": invoice.status, "balance_due": Decimal(invoice.balance_due), "credited": ZERO})
            continue
        recorded[key] = (None, request.invoice_id)  # a repeat within this batch is a duplicate
        new_transactions.append(dict(
            client_id=invoice.client_id, invoice_id=invoice.id, currency_id=invoice.currency_id, date=now,
            gateway=request.gateway, transaction_id=request.transaction_id,
            description=f"Invoice Payment #{invoice.number or invoice.id}", amount_in=request.amount,
            fees=request.fees, amount_out=ZERO))
        credited = ZERO
        label = f"#{invoice.number}" if invoice.number else f"id {invoice.id}"
        if invoice.status in PAYABLE:
            paid = Decimal(invoice.amount_paid) + request.amount
            owed = Decimal(invoice.total) - Decimal(invoice.credit_applied) - paid
            invoice.amount_paid = paid
            invoice.balance_due = max(owed, ZERO)
            if owed <= 0:
                invoice.status = InvoiceStatus.PAID
                invoice.date_paid = as_of
                credited = -owed
                newly_paid.append(invoice.id)
            if credited > 0:
                credits.append((invoice.client_id, credited, f"Overpayment on Invoice {label}", invoice.id,
                                f"gateway:{request.gateway}"))
        else:
            # Already paid, cancelled, draft or refunded: keep the money as credit, never lose it.
            credited = request.amount
            credits.append((invoice.client_id, credited, f"Payment on {invoice.status} Invoice {label} kept as credit",
                            invoice.id, f"gateway:{request.gateway}"))
        outcomes.append({"request": request, "outcome": "recorded", "key": key, "txn_row": None,
                         "status": invoice.status, "balance_due": Decimal(invoice.balance_due), "credited": credited})

    txn_ids = iter(insert_rows_returning_ids(session, Transaction.__table__, new_transactions))
    for outcome in outcomes:
        if outcome["outcome"] == "recorded":
            outcome["txn_row"] = next(txn_ids)
            recorded[outcome["key"]] = (outcome["txn_row"], outcome["request"].invoice_id)
    for outcome in outcomes:
        if outcome["txn_row"] is None:  # a repeat of a key first recorded in this batch
            outcome["txn_row"] = recorded[outcome["key"]][0]
    session.flush()
    for client_id, amount, description, invoice_id, source in credits:
        change_credit(session, client_id, amount, description, as_of=as_of, invoice_id=invoice_id, source=source)
    if newly_paid:
        settle_paid_invoices(session, sorted(set(newly_paid)))

    emails = [o for o in outcomes if o["outcome"] == "recorded"] if queue_email else []
    email_ids = dict(zip((id(o) for o in emails), queue_emails(session, [QueuedEmail(
        "payment_confirmation", invoices[o["request"].invoice_id].client_id,
        {"invoice_id": o["request"].invoice_id, "transaction_id": o["txn_row"]},
        f"payment_confirmation:{o['txn_row']}") for o in emails]), strict=True))
    return [PaymentResult(o["request"].invoice_id, o["txn_row"], o["outcome"], o["status"], o["balance_due"],
                          o["credited"], (email_ids[id(o)],) if id(o) in email_ids else ())
            for o in outcomes]


@dataclass(frozen=True)
class CreditApplied:
    invoice_id: int
    applied: Decimal
    balance_due: Decimal
    status: str


def apply_credit_to_invoice(session: Session, invoice_id: int, *, as_of: date, source: str,
                            amount: Decimal | None = None) -> CreditApplied:
    """Apply min(credit balance, balance due[, amount]) to an unpaid invoice.

    Locks client then invoice. An invoice fully covered becomes Paid and is settled.
    """
    client_id = session.execute(select(Invoice.client_id).where(Invoice.id == invoice_id)).scalar()
    if client_id is None:
        raise NotFound("invoice_id", invoice_id, "invoice")
    balance = Decimal(session.execute(
        for_update(select(Client.credit_balance).where(Client.id == client_id))).scalar_one())
    invoice = session.execute(for_update(select(Invoice).where(Invoice.id == invoice_id))).scalar_one()
    if invoice.status not in PAYABLE or invoice.kind == InvoiceKind.ADD_FUNDS:
        # Credit never pays for more credit.
        return CreditApplied(invoice_id, ZERO, Decimal(invoice.balance_due), invoice.status)
    take = min(balance, Decimal(invoice.balance_due), amount if amount is not None else balance)
    if take <= 0:
        return CreditApplied(invoice_id, ZERO, Decimal(invoice.balance_due), invoice.status)
    change_credit(session, client_id, -take, f"Credit Applied to Invoice #{invoice.number}", as_of=as_of,
                  invoice_id=invoice_id, source=source)
    invoice.credit_applied = Decimal(invoice.credit_applied) + take
    invoice.balance_due = Decimal(invoice.balance_due) - take
    if invoice.balance_due <= 0:
        invoice.status = InvoiceStatus.PAID
        invoice.date_paid = as_of
    session.flush()
    if invoice.status == InvoiceStatus.PAID:
        settle_paid_invoices(session, [invoice_id])
    return CreditApplied(invoice_id, take, Decimal(invoice.balance_due), invoice.status)


def settle_paid_invoices(session: Session, invoice_ids: Sequence[int]) -> None:
    """What paying an invoice does besides money: SPEC §8.

    Each billed thing's ``next_due_date`` advances one cycle from its previous value for every
    consecutive period that a Paid invoice covers (so paying twice, or paying out of order,
    still lands on the first unpaid period). An add-funds invoice credits its amount.
    Idempotent: the state is derived from what is paid, not from how often we are called.
    """
    rows = session.execute(
        select(InvoiceItem.item_type, InvoiceItem.item_id)
        .where(among(session, InvoiceItem.invoice_id, invoice_ids),
               InvoiceItem.item_type.in_([ItemType.SERVICE, ItemType.ADDON, ItemType.DOMAIN]),
               InvoiceItem.item_id.is_not(None))
        .distinct()
    ).all()
    by_type: dict[str, list[int]] = {}
    for item_type, item_id in rows:
        by_type.setdefault(item_type, []).append(item_id)
    for item_type, ids in sorted(by_type.items()):
        advance_paid_periods(session, item_type, sorted(ids))
    for inv in session.execute(select(Invoice).where(
            among(session, Invoice.id, invoice_ids), Invoice.kind == InvoiceKind.ADD_FUNDS,
            Invoice.status == InvoiceStatus.PAID)).scalars():
        _credit_add_funds(session, inv)


def advance_paid_periods(session: Session, item_type: str, item_ids: Sequence[int]) -> dict[int, date]:
    """Move each thing's ``next_due_date`` past every consecutive paid period.

    Locks the things' rows (in id order). Three statements whatever the number of things: read
    them, read their Paid billed periods from the earliest due date on, write what moved.
    Returns the new next due date of every thing that moved.
    """
    table = THING_TABLES[item_type].__table__
    things = session.execute(
        select(table.c.id, table.c.next_due_date, table.c.next_invoice_date, table.c.billing_cycle,
               table.c.due_day)
        .where(among(session, table.c.id, item_ids), table.c.next_due_date.is_not(None))
        .order_by(table.c.id).with_for_update()).all()
    if not things:
        return {}
    paid = set(session.execute(
        select(BilledPeriod.item_id, BilledPeriod.due_date)
        .join(Invoice, Invoice.id == BilledPeriod.invoice_id)
        .where(BilledPeriod.item_type == item_type, among(session, BilledPeriod.item_id, [t.id for t in things]),
               BilledPeriod.due_date >= min(t.next_due_date for t in things),
               Invoice.status == InvoiceStatus.PAID)).all())
    moved: dict[int, date] = {}
    changes = []
    for t in things:
        current = t.next_due_date
        for _ in range(MAX_PERIODS_PER_SETTLEMENT):
            if (t.id, current) not in paid:
                break
            current = next_due_date(current, t.billing_cycle, t.due_day)
        if current != t.next_due_date:
            moved[t.id] = current
            next_invoice = t.next_invoice_date if t.next_invoice_date and t.next_invoice_date >= current else current
            changes.append({"id": t.id, "next_due_date": current, "next_invoice_date": next_invoice})
    update_rows(session, table, changes)
    return moved


def _credit_add_funds(session: Session, invoice: Invoice) -> None:
    """An add-funds invoice, once paid, puts its amount on the balance (once: keyed by invoice)."""
    from ..models import CreditHistory

    done = session.execute(select(exists().where(
        CreditHistory.invoice_id == invoice.id, CreditHistory.source == "add_funds"))).scalar()
    if done:
        return
    amount = Decimal(invoice.subtotal)
    change_credit(session, invoice.client_id, amount, f"Add Funds Invoice #{invoice.number}",
                  as_of=invoice.date_paid or invoice.date_created, invoice_id=invoice.id, source="add_funds")
