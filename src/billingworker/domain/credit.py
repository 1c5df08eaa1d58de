"""Credit balances (SPEC §8): every change under the client's row lock, with history, never
below zero (the ``credit_balance >= 0`` CHECK is the final guard)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from ..db import for_update
from .errors import NotFound, ValidationError
from .models import Client, CreditHistory, Invoice, InvoiceKind, InvoiceStatus
from .money import ZERO


@dataclass(frozen=True)
class CreditChange:
    client_id: int
    amount: Decimal
    balance_after: Decimal
    history_id: int


def change_credit(session: Session, client_id: int, amount: Decimal, description: str, *, as_of: date,
                  invoice_id: int | None = None, source: str = "") -> CreditChange:
    """Add (positive) or remove (negative) credit. Locks the client row; refuses to go below zero."""
    balance = session.execute(
        for_update(select(Client.credit_balance).where(Client.id == client_id))).scalar()
    if balance is None:
        raise NotFound("client_id", client_id, "client")
    after = Decimal(balance) + amount
    if after < 0:
        raise ValidationError("amount", str(amount),
                              f"would take the credit balance below zero (balance is {Decimal(balance)})")
    session.execute(update(Client).where(Client.id == client_id).values(credit_balance=after))
    history_id = session.execute(insert(CreditHistory).returning(CreditHistory.id).values(
        client_id=client_id, date=as_of, description=description, amount=amount, balance_after=after,
        invoice_id=invoice_id, source=source)).scalar_one()
    return CreditChange(client_id, amount, after, history_id)


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
    from .payments import PAYABLE, settle_paid_invoices

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
