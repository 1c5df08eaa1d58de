"""The ``apply_late_fees`` job in its ``interest`` mode, through a real Dramatiq worker, on SQLite
and PostgreSQL: the message sent twice, and a fan-out, add one line per month."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import select

from billingworker.actors import apply_late_fees
from billingworker.domain.models import Invoice
from billingworker.domain.models.collections import InvoiceInterestCharge
from billingworker.domain.settings import save_settings
from tests import factories as f

from .conftest import drain


def test_the_job_charges_each_month_once_however_often_it_runs(session, worker):
    # Given 1,000.00 due 15 Oct 2025 at 12 % a year, capped at 12.00 (the workers' today: 10 Jan 2026)
    save_settings(session, late_fee_days=1, late_fee_type="interest", late_fee_interest_rate="12",
                  late_fee_interest_cap_type="amount", late_fee_interest_cap="12.00")
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2025, 10, 15), lines=[("Server", "1000.00", False)])
    session.commit()
    # When the job runs for the client twice on 1 November, then fanned out on 1 December and 1 January
    for _ in range(2):
        apply_late_fees.send(client_id=c.id, as_of="2025-11-01")
        drain()
    for day in ("2025-12-01", "2026-01-01"):
        apply_late_fees.send(as_of=day)
        drain()
    # Then October 16-31 (5.26) and November (9.86, cut to the cap: 6.74) have their line, December none
    session.expire_all()
    rows = session.execute(select(InvoiceInterestCharge.period_start, InvoiceInterestCharge.amount)
                           .order_by(InvoiceInterestCharge.period_start)).all()
    assert rows == [(date(2025, 10, 1), Decimal("5.26")), (date(2025, 11, 1), Decimal("6.74"))]
    assert session.get(Invoice, inv.id).total == Decimal("1012.00")
