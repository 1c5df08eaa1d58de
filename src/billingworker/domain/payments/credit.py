"""Credit balances (SPEC §8): every change under the client's row lock, with history, never
below zero (the ``credit_balance >= 0`` CHECK is the final guard)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from ...db import for_update
from ..errors import NotFound, ValidationError
from ..models import Client, CreditHistory
from ..money import within_the_books


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
    within_the_books("amount", str(amount), f"client {client_id}'s credit balance", after)
    session.execute(update(Client).where(Client.id == client_id).values(credit_balance=after))
    history_id = session.execute(insert(CreditHistory).values(
        client_id=client_id, date=as_of, description=description, amount=amount, balance_after=after,
        invoice_id=invoice_id, source=source)).inserted_primary_key[0]
    return CreditChange(client_id, amount, after, history_id)
