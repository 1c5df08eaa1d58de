"""The client summary (SPEC §13): invoices per status (Unpaid shows the balance due), income
(gross revenue, client expenses = fees + refunds, net income), credit balance, counts, and the
last five emails."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billingworker.domain.errors import NotFound
from billingworker.domain.models import Affiliate, Client, EmailLog, Quote, Service, Ticket
from billingworker.domain.reports.summary import client_summary
from tests import factories as f
from tests.factories import statement_invoice as invoice
from tests.factories import statement_txn as txn

D = Decimal
DAY = date(2026, 1, 10)


def at(hour: int, day: int = 10) -> datetime:
    return datetime(2026, 1, day, hour, tzinfo=UTC)


@pytest.fixture
def busy(session) -> Client:
    c = f.client(session, credit_balance=D("12.50"))
    invoice(session, c, 1, DAY, "100.00", status="Paid")
    invoice(session, c, 2, DAY, "50.00", status="Paid")
    invoice(session, c, 3, DAY, "80.00", status="Unpaid", due="30.00")  # part paid
    invoice(session, c, 4, DAY, "20.00", status="Unpaid")
    invoice(session, c, 5, DAY, "40.00", status="Cancelled")
    invoice(session, c, 6, DAY, "15.00", status="Refunded")
    invoice(session, c, 0, DAY, "9.99", status="Draft")
    invoice(session, c, 7, DAY, "33.00", status="Collections")
    txn(session, c, at(9), money_in="100.00", fees="3.20")
    txn(session, c, at(10), money_in="50.00", fees="1.75")
    txn(session, c, at(11), money_in="50.00", fees="1.60")
    txn(session, c, at(12), money_in="15.00", fees="0.45")
    txn(session, c, at(13), money_out="15.00")
    for status in ("Active", "Active", "Suspended", "Terminated"):
        f.service(session, c, next_due_date=DAY, status=status)
    svc = session.query(Service).filter_by(client_id=c.id).first()
    f.addon(session, svc, next_due_date=DAY, status="Active")
    f.addon(session, svc, next_due_date=DAY, status="Cancelled")
    f.domain(session, c, next_due_date=DAY, status="Active")
    f.domain(session, c, next_due_date=DAY, domain="b.com", status="Expired")
    f.domain(session, c, next_due_date=DAY, domain="c.com", status="Active")
    for n in range(3):
        session.add(Quote(client_id=c.id, subject=f"Quote {n}", date_created=DAY))
    for n in range(2):
        session.add(Ticket(client_id=c.id, subject=f"Ticket {n}", date=at(8)))
    session.add(Affiliate(client_id=c.id))
    for n in range(7):
        session.add(EmailLog(client_id=c.id, template="invoice_created", subject=f"Email {n}", body_text="...",
                             to_address="ada@example.com", sent_at=at(8 + n)))
    # Someone else's records are not counted.
    other = f.client(session)
    invoice(session, other, 8, DAY, "999.00", status="Unpaid")
    txn(session, other, at(9), money_in="999.00", fees="9.00")
    f.service(session, other, next_due_date=DAY)
    session.add(EmailLog(client_id=other.id, subject="Not yours", body_text="", to_address="x", sent_at=at(23)))
    session.commit()
    return c


def test_invoices_per_status_with_the_balance_due_for_unpaid(session, busy):
    s = client_summary(session, busy.id)
    figures = {x.status: (x.count, x.amount) for x in s.invoices}
    assert figures == {
        "Draft": (1, D("9.99")), "Unpaid": (2, D("50.00")), "Paid": (2, D("150.00")),
        "Cancelled": (1, D("40.00")), "Refunded": (1, D("15.00")), "Collections": (1, D("33.00")),
        "Payment Pending": (0, D("0")),
    }


def test_income_is_money_in_less_fees_and_refunds(session, busy):
    s = client_summary(session, busy.id)
    assert s.gross_revenue == D("215.00")
    assert s.client_expenses == D("22.00")  # fees 7.00 + refund 15.00
    assert s.net_income == D("193.00")
    assert s.credit_balance == D("12.50")


def test_counts_of_things_and_records(session, busy):
    s = client_summary(session, busy.id)
    assert (s.services.active, s.services.total) == (2, 4)
    assert (s.addons.active, s.addons.total) == (1, 2)
    assert (s.domains.active, s.domains.total) == (2, 3)
    assert (s.quotes, s.tickets, s.affiliates) == (3, 2, 1)


def test_the_last_five_emails_newest_first(session, busy):
    s = client_summary(session, busy.id)
    assert [e.subject for e in s.recent_emails] == ["Email 6", "Email 5", "Email 4", "Email 3", "Email 2"]


def test_as_dict_has_string_amounts(session, busy):
    data = client_summary(session, busy.id).as_dict()
    assert data["invoices"]["Unpaid"] == {"count": 2, "amount": "50.00"}
    assert data["income"] == {"gross_revenue": "215.00", "client_expenses": "22.00", "net_income": "193.00",
                              "credit_balance": "12.50"}
    assert data["services"] == {"active": 2, "total": 4} and len(data["recent_emails"]) == 5


def test_a_new_client_has_zeros_everywhere(session):
    c = f.client(session)
    session.commit()
    s = client_summary(session, c.id)
    assert all(x.count == 0 and x.amount == 0 for x in s.invoices)
    assert s.gross_revenue == s.client_expenses == s.net_income == s.credit_balance == 0
    assert s.services.total == s.domains.total == s.quotes == s.tickets == s.affiliates == 0
    assert s.recent_emails == ()


def test_an_unknown_client_is_not_found(session):
    with pytest.raises(NotFound):
        client_summary(session, 424242)
