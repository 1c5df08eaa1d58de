"""Closing a client (SPEC §12), on SQLite and PostgreSQL, and twice at once on PostgreSQL."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from billingworker.domain.accounts.closing import close_client
from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.errors import NotFound
from billingworker.domain.models import (
    Addon,
    BillableItem,
    Client,
    CreditHistory,
    Domain,
    Invoice,
    ModuleCommand,
    Service,
)
from tests import factories as f
from tests.domain.client_records_factories import TODAY, client_with_every_record
from tests.factories import race


def state(session, client_id: int) -> dict:
    session.expire_all()
    return {
        "client": session.scalar(select(Client.status).where(Client.id == client_id)),
        "credit": Decimal(session.scalar(select(Client.credit_balance).where(Client.id == client_id))),
        "invoices": dict(session.execute(select(Invoice.id, Invoice.status)
                                         .where(Invoice.client_id == client_id)).all()),
        "services": dict(session.execute(select(Service.id, Service.status)
                                         .where(Service.client_id == client_id)).all()),
        "addons": sorted(session.scalars(select(Addon.status).where(Addon.client_id == client_id))),
        "domains": sorted(session.scalars(select(Domain.status).where(Domain.client_id == client_id))),
        "billables": sorted(session.scalars(select(BillableItem.invoice_action)
                                            .where(BillableItem.client_id == client_id))),
        "history": session.scalar(select(func.count()).select_from(CreditHistory)
                                  .where(CreditHistory.client_id == client_id)),
    }


def test_close_cancels_unpaid_invoices_and_live_things_and_keeps_the_rest(session):
    r = client_with_every_record(session)
    session.commit()

    result = close_client(session, r.client_id, as_of=TODAY)
    session.commit()

    s = state(session, r.client_id)
    assert s["client"] == "Closed"
    assert s["invoices"] == {r.unpaid_invoice_id: "Cancelled", r.paid_invoice_id: "Paid",
                             r.draft_invoice_id: "Draft", r.pending_invoice_id: "Payment Pending"}
    assert s["services"] == {r.service_id: "Cancelled", r.terminated_service_id: "Terminated"}
    assert s["addons"] == ["Cancelled"] and s["domains"] == ["Cancelled"]
    assert s["billables"] == ["dont_invoice"]
    # the 4.00 of credit applied to the cancelled invoice comes back to the balance
    assert s["credit"] == Decimal("29.00")
    unpaid = session.get(Invoice, r.unpaid_invoice_id)
    assert unpaid.credit_applied == 0 and unpaid.balance_due == Decimal("10.00")
    assert (result.invoices_cancelled, result.services_cancelled, result.addons_cancelled,
            result.domains_cancelled, result.billable_items_stopped) == (1, 1, 1, 1, 1)
    assert result.credit_returned == Decimal("4.00") and not result.already_closed
    # no server-module command: only the one the factory made
    assert session.scalar(select(func.count()).select_from(ModuleCommand)) == 1


def test_closing_twice_is_closing_once(session):
    r = client_with_every_record(session)
    session.commit()
    close_client(session, r.client_id, as_of=TODAY)
    session.commit()
    once = state(session, r.client_id)

    again = close_client(session, r.client_id, as_of=TODAY)
    session.commit()

    assert state(session, r.client_id) == once
    assert again.already_closed
    assert (again.invoices_cancelled, again.services_cancelled, again.credit_returned) == (0, 0, Decimal(0))


def test_closed_client_is_not_invoiced_by_the_due_invoice_run(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    close_client(session, c.id, as_of=TODAY)
    session.commit()
    # even a thing an admin sets back to Active is not billed while the client is Closed
    session.execute(Service.__table__.update().values(status="Active"))
    session.commit()

    assert generate_for_clients(session, [c.id], TODAY).invoices_created == 0


def test_closing_an_unknown_client_is_refused(session):
    with pytest.raises(NotFound) as error:
        close_client(session, 424242, as_of=TODAY)
    assert error.value.field == "client_id"


def test_two_workers_closing_at_once_close_once(pg_engine, pg_session):
    r = client_with_every_record(pg_session)
    pg_session.commit()

    results = race(pg_engine, *[lambda s: close_client(s, r.client_id, as_of=TODAY)] * 2)

    assert sorted(x.already_closed for x in results) == [False, True]
    assert sum(x.credit_returned for x in results) == Decimal("4.00")
    s = state(pg_session, r.client_id)
    assert s["credit"] == Decimal("29.00") and s["history"] == 3
    assert s["invoices"][r.unpaid_invoice_id] == "Cancelled"
