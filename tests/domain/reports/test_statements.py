"""Account statements (SPEC §13): opening, running and closing balances to the cent; what is a
debit (not Draft, Cancelled, add-funds or Refunded invoices) and what is a credit (adjustments,
not credit that moves money already counted); both ends of the range included."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest

from billingworker.domain.billing.manual_invoices import create_add_funds_invoice
from billingworker.domain.errors import NotFound, ValidationError
from billingworker.domain.models import Client, InvoiceKind
from billingworker.domain.payments.payments import apply_payment
from billingworker.domain.reports.statements import account_statement
from tests import factories as f
from tests.factories import statement_at as at
from tests.factories import statement_credit as credit
from tests.factories import statement_invoice as invoice
from tests.factories import statement_txn as txn

D = Decimal
JAN1, JAN31 = date(2026, 1, 1), date(2026, 1, 31)


@pytest.fixture
def book(session):
    """A client with history before January, a January, and things after it."""
    c = f.client(session)
    # Before the range: owed 100, paid 100 (fees are ours), an admin credit of 20 -> opening 20.00.
    first = invoice(session, c, 1, date(2025, 12, 5), "100.00")
    txn(session, c, at(date(2025, 12, 6)), money_in="100.00", fees="3.20", invoice_id=first.id,
        description="Invoice Payment #1")
    credit(session, c, date(2025, 12, 10), "20.00", "Goodwill credit")
    invoice(session, c, 0, date(2025, 12, 1), "999.00", status="Draft")
    invoice(session, c, 90, date(2025, 12, 2), "500.00", status="Cancelled")
    # January.
    unpaid = invoice(session, c, 2, JAN1, "59.99", status="Unpaid", due="39.99")
    funds = invoice(session, c, 3, date(2026, 1, 5), "50.00", kind=InvoiceKind.ADD_FUNDS)
    txn(session, c, at(date(2026, 1, 5), 10), money_in="50.00", fees="1.75", invoice_id=funds.id,
        description="Invoice Payment #3")
    credit(session, c, date(2026, 1, 5), "50.00", "Add Funds Invoice #3", source="add_funds", invoice_id=funds.id)
    credit(session, c, date(2026, 1, 6), "-20.00", "Credit Applied to Invoice #2", source="job:generate",
           invoice_id=unpaid.id)
    credit(session, c, date(2026, 1, 7), "12.34", "Overpayment on Invoice #2", source="gateway:stripe")
    invoice(session, c, 91, date(2026, 1, 9), "70.00", status="Cancelled")
    invoice(session, c, 92, date(2026, 1, 10), "25.00", status="Draft")
    refunded = invoice(session, c, 4, date(2026, 1, 12), "30.00", status="Refunded")
    txn(session, c, at(date(2026, 1, 12)), money_in="30.00", invoice_id=refunded.id, description="Invoice Payment #4")
    txn(session, c, at(date(2026, 1, 20)), money_out="30.00", invoice_id=refunded.id, description="Refund #4")
    credit(session, c, JAN31, "-3.50", "Credit removed by admin")
    txn(session, c, at(JAN31, 23, 59), money_in="1.00", description="Last minute")
    # After the range.
    txn(session, c, at(date(2026, 2, 1), 0, 1), money_in="40.00", description="February payment")
    invoice(session, c, 5, date(2026, 2, 1), "80.00", status="Unpaid")
    credit(session, c, date(2026, 2, 1), "5.00", "February credit")
    # Another client's money is not ours.
    other = f.client(session)
    txn(session, other, at(date(2026, 1, 15)), money_in="999.00")
    invoice(session, other, 6, date(2026, 1, 15), "999.00")
    session.commit()
    return c


def test_opening_running_and_closing_balances_to_the_cent(session, book):
    s = account_statement(session, book.id, JAN1, JAN31)
    assert s.opening_balance == D("20.00")
    assert [(r.type, r.date, r.description, r.credit, r.debit, r.balance) for r in s.rows] == [
        ("Invoice", JAN1, "Invoice #2", 0, D("59.99"), D("-39.99")),
        ("Invoice", date(2026, 1, 5), "Add Funds Invoice #3 (credit, not a debit)", 0, 0, D("-39.99")),
        ("Payment", date(2026, 1, 5), "Invoice Payment #3", D("50.00"), 0, D("10.01")),
        ("Invoice", date(2026, 1, 12), "Invoice #4 (Refunded)", 0, 0, D("10.01")),
        ("Payment", date(2026, 1, 12), "Invoice Payment #4", D("30.00"), 0, D("40.01")),
        ("Refund", date(2026, 1, 20), "Refund #4", 0, D("30.00"), D("10.01")),
        ("Payment", JAN31, "Last minute", D("1.00"), 0, D("11.01")),
        ("Credit", JAN31, "Credit removed by admin", 0, D("3.50"), D("7.51")),
    ]
    assert s.closing_balance == D("7.51")
    assert s.total_credits == D("81.00") and s.total_debits == D("93.49")
    assert s.opening_balance + s.total_credits - s.total_debits == s.closing_balance


def test_the_next_statement_opens_where_this_one_closed(session, book):
    jan = account_statement(session, book.id, JAN1, JAN31)
    feb = account_statement(session, book.id, date(2026, 2, 1), date(2026, 2, 28))
    assert feb.opening_balance == jan.closing_balance
    assert [r.balance for r in feb.rows] == [D("-72.49"), D("-32.49"), D("-27.49")]
    assert feb.closing_balance == D("-27.49")


def test_both_ends_of_the_range_are_included(session, book):
    one_day = account_statement(session, book.id, JAN1, JAN1)
    assert [r.description for r in one_day.rows] == ["Invoice #2"]
    assert one_day.opening_balance == D("20.00") and one_day.closing_balance == D("-39.99")
    last_day = account_statement(session, book.id, JAN31, JAN31)
    assert [r.description for r in last_day.rows] == ["Last minute", "Credit removed by admin"]
    assert last_day.opening_balance == D("10.01") and last_day.closing_balance == D("7.51")


def test_an_empty_range_has_opening_equal_to_closing(session, book):
    s = account_statement(session, book.id, date(2026, 1, 21), date(2026, 1, 30))
    assert s.rows == () and s.opening_balance == s.closing_balance == D("10.01")


def test_transactions_are_dated_in_the_installation_time_zone(session):
    c = f.client(session)
    txn(session, c, datetime(2025, 12, 31, 14, 0, tzinfo=UTC), money_in="10.00", description="New Year in Sydney")
    txn(session, c, datetime(2026, 1, 31, 13, 30, tzinfo=UTC), money_in="5.00", description="February in Sydney")
    session.commit()
    utc = account_statement(session, c.id, JAN1, JAN31)
    assert utc.opening_balance == D("10.00") and [r.description for r in utc.rows] == ["February in Sydney"]
    sydney = account_statement(session, c.id, JAN1, JAN31, time_zone="Australia/Sydney")
    assert sydney.opening_balance == 0 and [r.description for r in sydney.rows] == ["New Year in Sydney"]
    assert sydney.rows[0].date == JAN1


def test_the_closing_balance_is_credit_minus_what_is_owed_after_real_payments(session):
    """Through the real paths: add funds, pay them, credit applied to a new invoice, an overpayment."""
    c = f.client(session)
    session.commit()
    funds = create_add_funds_invoice(session, c.id, D("40.00"), as_of=date(2026, 1, 3))
    apply_payment(session, funds.invoice_id, D("40.00"), gateway="bank", transaction_id="b1", as_of=date(2026, 1, 3),
                  now=at(date(2026, 1, 3)), queue_email=False)
    owed = invoice(session, c, 77, date(2026, 1, 4), "65.00", status="Unpaid")
    from billingworker.domain.payments.payments import apply_credit_to_invoice

    apply_credit_to_invoice(session, owed.id, as_of=date(2026, 1, 4), source="test")
    apply_payment(session, owed.id, D("30.00"), gateway="bank", transaction_id="b2", as_of=date(2026, 1, 6),
                  now=at(date(2026, 1, 6)), queue_email=False)  # 25.00 due: 5.00 over
    session.commit()
    session.expire_all()
    client = session.get(Client, c.id)
    s = account_statement(session, c.id, JAN1, JAN31)
    assert client.credit_balance == D("5.00")
    assert s.closing_balance == D("5.00"), "nothing owed, 5.00 of credit"
    assert [r.type for r in s.rows] == ["Invoice", "Payment", "Invoice", "Payment"]
    assert [r.debit for r in s.rows] == [0, 0, D("65.00"), 0], "the add-funds invoice is not a debit"


def test_a_range_that_ends_before_it_starts_is_refused(session, book):
    with pytest.raises(ValidationError) as error:
        account_statement(session, book.id, JAN31, JAN1)
    assert error.value.field == "from"


def test_an_unknown_client_is_not_found(session):
    with pytest.raises(NotFound):
        account_statement(session, 424242, JAN1, JAN31)


def test_as_dict_has_string_amounts_rounded_to_the_currency(session, book):
    data = account_statement(session, book.id, JAN1, JAN31).as_dict()
    assert data["opening_balance"] == "20.00" and data["closing_balance"] == "7.51"
    assert data["currency"] == "USD" and data["from"] == "2026-01-01"
    assert data["rows"][0] == {"type": "Invoice", "date": "2026-01-01", "description": "Invoice #2",
                               "credit": "0.00", "debit": "59.99", "balance": "-39.99"}
