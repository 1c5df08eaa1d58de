"""Payments: one gateway transaction pays one invoice."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.errors import Conflict
from billingworker.domain.models import Invoice, Transaction
from billingworker.domain.payments.payments import apply_payment
from tests import factories as f

DAY = date(2026, 1, 10)
NOW = datetime(2026, 1, 10, 9, tzinfo=UTC)


def test_a_transaction_id_already_used_for_another_invoice_is_refused(session):
    a, b = f.client(session), f.client(session)
    f.service(session, a, next_due_date=date(2026, 1, 12))
    f.service(session, b, next_due_date=date(2026, 1, 12))
    session.commit()
    first, second = generate_for_clients(session, [a.id, b.id], DAY).invoice_ids
    session.commit()
    apply_payment(session, first, Decimal("10.00"), gateway="stripe", transaction_id="ch_1", as_of=DAY, now=NOW)
    session.commit()
    with pytest.raises(Conflict, match="already recorded for invoice"):
        apply_payment(session, second, Decimal("10.00"), gateway="stripe", transaction_id="ch_1", as_of=DAY, now=NOW)
    session.rollback()
    assert session.get(Invoice, second).status == "Unpaid"
    assert session.scalar(select(func.count()).select_from(Transaction)) == 1
