"""Late fees (SPEC §6), on SQLite and PostgreSQL; the race on PostgreSQL only."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billingworker.domain.billing.tax import Rate
from billingworker.domain.collections.late_fees import apply_late_fees_for_clients
from billingworker.domain.collections.reminders import send_overdue_reminders_for_clients
from billingworker.domain.messaging.rendering import render_outbox_email
from billingworker.domain.models import (
    Client,
    Invoice,
    InvoiceItem,
    InvoiceLateFee,
    JobFailure,
    OutboxEmail,
    Setting,
)
from billingworker.domain.settings import save_settings
from tests import factories as f
from tests.factories import REMINDER_DUE as DUE
from tests.factories import count_rows as count
from tests.factories import race
from tests.factories import reminder_invoice as make_invoice
from tests.factories import table_counts as book

LATE = date(2026, 1, 23)  # DUE + 3 days
VAT = Rate("VAT", Decimal("20"))


def fees(session: Session, **settings) -> None:
    """Late fee settings: 3 days, a fixed 5.00, unless told otherwise."""
    values = {"late_fee_days": 3, "late_fee_type": "fixed", "late_fee_amount": "5.00", **settings}
    save_settings(session, **values)


def run(session: Session, *clients: Client, as_of: date = LATE):
    result = apply_late_fees_for_clients(session, [c.id for c in clients], as_of)
    session.commit()
    return result


def items(session: Session, invoice: Invoice) -> list[InvoiceItem]:
    return list(session.execute(select(InvoiceItem).where(InvoiceItem.invoice_id == invoice.id)
                                .order_by(InvoiceItem.id)).scalars())


def fresh(session: Session, invoice: Invoice) -> Invoice:
    session.expire_all()
    return session.get(Invoice, invoice.id)


def assert_adds_up(invoice: Invoice, lines: list[InvoiceItem]) -> None:
    """Exclusive prices: the lines plus the taxes are the total; the balance is what is left."""
    assert sum(i.amount for i in lines) == invoice.subtotal
    assert invoice.subtotal + invoice.tax1 + invoice.tax2 == invoice.total
    assert invoice.balance_due == invoice.total - invoice.credit_applied - invoice.amount_paid


def test_a_fixed_late_fee_is_added_once_the_invoice_is_late_enough(session):
    # Given an Unpaid invoice of 10.00 due on the 20th and a fixed fee of 5.00 after 3 days
    fees(session)
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Shared Hosting", "10.00", False)])
    session.commit()
    # When the job runs 2 days late, then 3
    early = run(session, c, as_of=date(2026, 1, 22))
    assert early.fees_added == 0 and count(session, InvoiceLateFee) == 0
    result = run(session, c, as_of=LATE)
    # Then the fee comes on the third day, as one untaxed "Late Fee" line, and the totals follow
    assert (result.fees_added, result.amount) == (1, Decimal("5.00"))
    assert result.preview == [{"client_id": c.id, "invoice_id": inv.id, "fee": "5.00", "total": "15.00",
                               "balance_due": "15.00"}]
    lines = items(session, inv)
    fee = lines[-1]
    assert (fee.item_type, fee.item_id, fee.description, fee.amount, fee.taxed, fee.due_date) == (
        "late_fee", None, "Late Fee", Decimal("5.00"), False, None)
    inv = fresh(session, inv)
    assert (inv.subtotal, inv.total, inv.balance_due, inv.status) == (
        Decimal("15.00"), Decimal("15.00"), Decimal("15.00"), "Unpaid")
    assert_adds_up(inv, lines)
    [record] = session.execute(select(InvoiceLateFee)).scalars()
    assert (record.invoice_id, record.invoice_item_id, record.amount, record.applied_on) == (
        inv.id, fee.id, Decimal("5.00"), LATE)


@pytest.mark.parametrize(("total", "percent", "expected"), [
    ("33.33", "10", "3.33"),  # 3.333
    ("10.05", "15", "1.51"),  # 1.5075
    ("10.10", "5", "0.51"),  # 0.505: half up, not half even
    ("10.03", "15", "1.50"),  # 1.5045
])
def test_a_percentage_fee_is_rounded_half_up_to_the_cent(session, total, percent, expected):
    fees(session, late_fee_type="percentage", late_fee_amount=percent)
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Hosting", total, False)])
    session.commit()
    result = run(session, c)
    assert result.amount == Decimal(expected)
    assert items(session, inv)[-1].amount == Decimal(expected)
    assert fresh(session, inv).total == Decimal(total) + Decimal(expected)


def test_a_percentage_fee_is_rounded_to_the_currency_of_the_invoice(session):
    # 10 % of JPY 1,005 is 100.5: half up to the yen
    fees(session, late_fee_type="percentage", late_fee_amount="10")
    yen = f.currency(session, "JPY", prefix="¥", minor_units=0)
    c = f.client(session, currency_id=yen.id)
    inv = make_invoice(session, c, lines=[("Hosting", "1005", False)])
    session.commit()
    assert run(session, c).amount == Decimal("101")
    assert fresh(session, inv).total == Decimal("1106")


def test_a_percentage_fee_is_taken_on_the_total_with_tax(session):
    fees(session, late_fee_type="percentage", late_fee_amount="10")
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Hosting", "10.00", True)], rate1=VAT)  # total 12.00
    session.commit()
    assert run(session, c).amount == Decimal("1.20")
    assert fresh(session, inv).total == Decimal("13.20")


def test_the_minimum_is_a_floor(session):
    fees(session, late_fee_type="percentage", late_fee_amount="1", late_fee_minimum="2.50")
    c = f.client(session)
    small, large = (make_invoice(session, c, lines=[("Hosting", "10.00", False)]),
                    make_invoice(session, c, lines=[("Server", "1000.00", False)]))
    session.commit()
    run(session, c)
    assert items(session, small)[-1].amount == Decimal("2.50")  # 0.10 raised to the minimum
    assert items(session, large)[-1].amount == Decimal("10.00")  # above it: unchanged


def test_a_fixed_fee_below_the_minimum_is_raised_too(session):
    fees(session, late_fee_amount="1.00", late_fee_minimum="3.00")
    c = f.client(session)
    make_invoice(session, c)
    session.commit()
    assert run(session, c).amount == Decimal("3.00")


@pytest.mark.parametrize("settings", [
    {"late_fee_amount": "0"},
    {"late_fee_amount": "0", "late_fee_minimum": "5.00"},
    {"late_fee_days": 0},
])
def test_amount_zero_or_days_zero_mean_no_late_fees(session, settings):
    fees(session, **settings)
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    result = run(session, c, as_of=date(2026, 6, 1))
    assert result.fees_added == 0
    assert count(session, InvoiceLateFee) == 0 and len(items(session, inv)) == 1


def test_an_untaxed_fee_leaves_the_tax_as_it_was(session):
    fees(session)
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Hosting", "10.00", True)], rate1=VAT)
    session.commit()
    run(session, c)
    inv = fresh(session, inv)
    assert (inv.subtotal, inv.tax1, inv.total, inv.balance_due) == (
        Decimal("15.00"), Decimal("2.00"), Decimal("17.00"), Decimal("17.00"))
    assert_adds_up(inv, items(session, inv))


def test_a_taxed_fee_is_taxed_at_the_rates_the_invoice_was_issued_with(session):
    # Given the late fee is taxed, and the tax rule changed since the invoice was issued
    fees(session, late_fee_taxed=True)
    f.tax_rule(session, rate="25")
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Hosting", "10.00", True), ("Setup", "3.00", False)], rate1=VAT)
    session.commit()
    run(session, c)
    # Then the fee line is taxed at the invoice's 20 %, not today's 25 %
    inv = fresh(session, inv)
    lines = items(session, inv)
    assert lines[-1].taxed is True
    assert (inv.subtotal, inv.tax1, inv.tax_rate1, inv.tax_name1, inv.total) == (
        Decimal("18.00"), Decimal("3.00"), Decimal("20"), "VAT", Decimal("21.00"))
    assert_adds_up(inv, lines)


def test_two_levels_and_compound_tax_are_recomputed(session):
    fees(session, late_fee_taxed=True, tax_l2_compound=True)
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Hosting", "10.00", True)], rate1=VAT,
                       rate2=Rate("Local", Decimal("10")), compound=True)
    session.commit()
    run(session, c)
    inv = fresh(session, inv)
    # taxed 15.00: tax1 3.00, tax2 10 % of 18.00 = 1.80
    assert (inv.subtotal, inv.tax1, inv.tax2, inv.total) == (
        Decimal("15.00"), Decimal("3.00"), Decimal("1.80"), Decimal("19.80"))
    assert_adds_up(inv, items(session, inv))


def test_inclusive_prices_take_the_tax_out_of_a_taxed_fee(session):
    fees(session, late_fee_taxed=True, late_fee_amount="6.00", tax_type="inclusive")
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Hosting", "12.00", True)], rate1=VAT, inclusive=True)
    session.commit()
    run(session, c)
    inv = fresh(session, inv)
    assert (inv.subtotal, inv.tax1, inv.total) == (Decimal("15.00"), Decimal("3.00"), Decimal("18.00"))


def test_the_balance_keeps_the_credit_applied_and_the_amount_paid(session):
    fees(session)
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Hosting", "10.00", False)], credit_applied="2.00", amount_paid="3.00")
    session.commit()
    run(session, c)
    inv = fresh(session, inv)
    assert (inv.total, inv.balance_due) == (Decimal("15.00"), Decimal("10.00"))


def test_a_second_run_adds_nothing(session):
    fees(session)
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    first = run(session, c)
    again = run(session, c)
    later = run(session, c, as_of=date(2026, 3, 1))
    assert (first.fees_added, again.fees_added, later.fees_added) == (1, 0, 0)
    assert again.failures == [] and later.failures == [], "already done is not an error"
    assert len(items(session, inv)) == 2
    assert fresh(session, inv).total == Decimal("15.00")


def test_a_fee_recorded_by_another_path_is_not_added_again(session):
    fees(session)
    c = f.client(session)
    inv = make_invoice(session, c)
    session.add(InvoiceLateFee(invoice_id=inv.id, invoice_item_id=None, amount=Decimal("5.00"),
                               applied_on=date(2026, 1, 21)))
    session.commit()
    result = run(session, c)
    assert (result.fees_added, result.failures) == (0, [])
    assert len(items(session, inv)) == 1


@pytest.mark.parametrize("status", ["Paid", "Cancelled", "Draft", "Refunded", "Collections", "Payment Pending"])
def test_only_unpaid_invoices_get_a_fee(session, status):
    fees(session)
    c = f.client(session)
    inv = make_invoice(session, c, status=status)
    session.commit()
    assert run(session, c).fees_added == 0
    assert len(items(session, inv)) == 1 and count(session, InvoiceLateFee) == 0


def test_an_add_funds_invoice_gets_no_fee(session):
    fees(session)
    c = f.client(session)
    make_invoice(session, c, kind="add_funds")
    session.commit()
    assert run(session, c).fees_added == 0


def test_the_client_flag_off_gets_none_and_a_closed_client_neither(session):
    fees(session)
    exempt = f.client(session, apply_late_fees=False)
    closed = f.client(session, status="Closed")
    late = f.client(session)
    for c in (exempt, closed, late):
        make_invoice(session, c)
    session.commit()
    result = run(session, exempt, closed, late)
    assert [line["client_id"] for line in result.preview] == [late.id]
    assert session.scalar(select(func.count()).select_from(InvoiceItem).where(InvoiceItem.item_type == "late_fee")) == 1


def test_an_unknown_fee_type_is_reported_and_adds_nothing(session):
    # save_settings refuses it; the admin panel writes the row itself
    fees(session)
    session.get(Setting, "late_fee_type").value = '"compound"'
    c = f.client(session)
    make_invoice(session, c)
    session.commit()
    result = run(session, c)
    assert result.fees_added == 0
    [failure] = result.failures
    assert (failure.client_id, failure.field, failure.value) == (None, "settings.late_fee_type", "compound")
    assert count(session, JobFailure) == 0  # recorded by the caller, not here


def test_a_dry_run_writes_nothing_and_predicts_the_real_run(session):
    fees(session, late_fee_type="percentage", late_fee_amount="10")
    c = f.client(session)
    make_invoice(session, c, lines=[("Hosting", "33.33", False)])
    make_invoice(session, c, lines=[("Domain", "12.00", False)])
    session.commit()
    before = book(session)
    preview = apply_late_fees_for_clients(session, [c.id], LATE, dry_run=True)
    assert book(session) == before, "nothing written, even before the caller rolls back"
    session.rollback()
    assert (preview.fees_added, preview.amount) == (2, Decimal("4.53"))
    real = run(session, c)
    assert real.preview == preview.preview and real.amount == preview.amount


def test_the_next_reminder_shows_the_late_fee(session):
    # Given a late fee added on the 23rd, and the second notice due on the 28th
    fees(session)
    c = f.client(session)
    inv = make_invoice(session, c, lines=[("Hosting", "10.00", False)])
    session.commit()
    run(session, c)
    [email_id] = send_overdue_reminders_for_clients(session, [c.id], date(2026, 1, 28)).email_ids
    session.commit()
    session.expire_all()  # delivery reads the invoice afresh, as a new session would
    # Then the notice lists the Late Fee line and the new balance
    email = render_outbox_email(session, session.get(OutboxEmail, email_id))
    for body in (email.text, email.html):
        assert "Late Fee" in body and "$5.00 USD" in body and "$15.00 USD" in body
    assert fresh(session, inv).date_due == DUE


def test_two_workers_at_once_add_one_fee(pg_engine, pg_session):
    s = pg_session
    fees(s)
    c = f.client(s)
    inv = make_invoice(s, c, lines=[("Hosting", "10.00", False)])
    s.commit()

    def apply(session):
        return apply_late_fees_for_clients(session, [c.id], LATE).fees_added

    added = race(pg_engine, apply, apply, apply)
    assert sorted(added) == [0, 0, 1]
    s.rollback()
    assert count(s, InvoiceLateFee) == 1
    assert len(items(s, inv)) == 2
    assert fresh(s, inv).total == Decimal("15.00")


def test_late_fees_and_reminders_at_once_on_one_client_both_happen_once(pg_engine, pg_session):
    s = pg_session
    fees(s)
    c = f.client(s)
    make_invoice(s, c, lines=[("Hosting", "10.00", False)])
    s.commit()

    def apply(session):
        return apply_late_fees_for_clients(session, [c.id], LATE).fees_added

    def remind(session):
        return len(send_overdue_reminders_for_clients(session, [c.id], LATE).email_ids)

    race(pg_engine, apply, remind, apply, remind)
    s.rollback()
    assert count(s, InvoiceLateFee) == 1 and count(s, OutboxEmail) == 1
