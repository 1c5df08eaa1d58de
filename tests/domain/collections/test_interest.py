"""Interest as a late fee (SPEC §6, late_fee_type ``interest``), on SQLite and PostgreSQL; the
race on PostgreSQL only. Amounts to the cent: balance × rate × days ÷ 36500, half up."""

from __future__ import annotations

import threading
from datetime import date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billingworker.db import session_factory
from billingworker.domain.billing.tax import Rate
from billingworker.domain.collections.interest import Period, interest_for, whole_periods
from billingworker.domain.collections.late_fees import apply_late_fees_for_clients
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import (
    Client,
    CreditHistory,
    Invoice,
    InvoiceItem,
    InvoiceLateFee,
    Setting,
    Transaction,
)
from billingworker.domain.models.collections import InvoiceInterestCharge
from billingworker.domain.settings import save_settings
from tests import factories as f

D = Decimal
VAT = Rate("VAT", D("20"))


def interest(session: Session, **settings) -> None:
    """Interest at 12 % a year from the first day past due (late_fee_days 1), no cap."""
    save_settings(session, **{"late_fee_days": 1, "late_fee_type": "interest", "late_fee_interest_rate": "12",
                              **settings})


def run(session: Session, client: Client, as_of: date, *, dry_run: bool = False):
    result = apply_late_fees_for_clients(session, [client.id], as_of, dry_run=dry_run)
    session.commit()
    return result


def lines(session: Session, inv: Invoice) -> list[tuple[str, Decimal]]:
    """The interest lines of the invoice: (description, amount), in order."""
    session.expire_all()
    return [(i.description, i.amount) for i in session.scalars(
        select(InvoiceItem).where(InvoiceItem.invoice_id == inv.id, InvoiceItem.item_type == "late_fee")
        .order_by(InvoiceItem.id))]


def charges(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(InvoiceInterestCharge))


def fresh(session: Session, inv: Invoice) -> Invoice:
    session.expire_all()
    return session.get(Invoice, inv.id)


def pay(session: Session, inv: Invoice, amount: str, on: date) -> None:
    """A partial payment recorded as the payment job records it: a dated transaction."""
    session.add(Transaction(client_id=inv.client_id, invoice_id=inv.id, date=datetime(on.year, on.month, on.day, 12),
                            gateway="banktransfer", transaction_id=f"t-{on}", amount_in=D(amount)))
    inv.amount_paid = D(inv.amount_paid) + D(amount)
    inv.balance_due = D(inv.balance_due) - D(amount)


# --- the arithmetic (no database) ----------------------------------------------------------------

@pytest.mark.parametrize(("balance", "rate", "days", "expected"), [
    ("1000.00", "12", 29, "9.53"),  # February 2028 (leap): 9.5342…
    ("1000.00", "12", 31, "10.19"),  # 10.1917…
    ("1000.00", "12", 30, "9.86"),  # 9.8630…
    ("1000.00", "12", 16, "5.26"),  # 5.2602…
    ("36.50", "1", 5, "0.01"),  # exactly 0.005: half up, not half even
    ("1000.00", "12", 366, "120.33"),  # a whole leap year is 366/365 of the rate (actual/365)
])
def test_interest_is_simple_actual_365_and_rounded_half_up_once(balance, rate, days, expected):
    assert interest_for(D(balance), D(rate), days) == D(expected)


def test_whole_periods_are_the_calendar_months_that_are_over():
    # Due 15 Dec 2027: December from the 16th, then whole months; February 2028 has 29 days.
    assert whole_periods(date(2027, 12, 15), date(2028, 3, 1)) == [
        Period(date(2027, 12, 1), date(2027, 12, 16), date(2027, 12, 31)),
        Period(date(2028, 1, 1), date(2028, 1, 1), date(2028, 1, 31)),
        Period(date(2028, 2, 1), date(2028, 2, 1), date(2028, 2, 29))]
    # The month in progress is not charged; on its last day it is not over yet.
    assert whole_periods(date(2028, 2, 10), date(2028, 2, 29)) == []
    # Due on the last day of a month: that month has no past-due day.
    assert [p.start for p in whole_periods(date(2028, 1, 31), date(2028, 3, 1))] == [date(2028, 2, 1)]


# --- to the cent, over month ends and leap years -------------------------------------------------

def test_one_line_per_month_on_the_first_run_after_it_across_2027_2028_and_feb_29(session):
    # Given 1,000.00 due 15 Dec 2027, interest at 12 % a year
    interest(session)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    session.commit()
    # When the task runs every day from the due date to 2 March 2028
    added_on = {}
    day = date(2027, 12, 15)
    while day <= date(2028, 3, 2):
        result = run(session, c, day)
        if result.fees_added:
            added_on[day] = [(p["period"], p["fee"]) for p in result.preview]
        day += timedelta(days=1)
    # Then each month is charged once, on the first day after it: Dec 16-31 (16 days), January
    # (31), February 2028 with its 29th day
    assert added_on == {date(2028, 1, 1): [("2027-12-16 – 2027-12-31", "5.26")],
                        date(2028, 2, 1): [("2028-01-01 – 2028-01-31", "10.19")],
                        date(2028, 3, 1): [("2028-02-01 – 2028-02-29", "9.53")]}
    assert lines(session, inv) == [("Interest 2027-12-16 – 2027-12-31", D("5.26")),
                                   ("Interest 2028-01-01 – 2028-01-31", D("10.19")),
                                   ("Interest 2028-02-01 – 2028-02-29", D("9.53"))]
    inv = fresh(session, inv)
    assert (inv.subtotal, inv.total, inv.balance_due, inv.status) == (
        D("1024.98"), D("1024.98"), D("1024.98"), "Unpaid")
    feb = session.get(InvoiceInterestCharge, (inv.id, date(2028, 2, 1)))
    assert (feb.first_day, feb.period_end, feb.days, feb.balance, feb.rate, feb.amount, feb.applied_on) == (
        date(2028, 2, 1), date(2028, 2, 29), 29, D("1000.00"), D("12"), D("9.53"), date(2028, 3, 1))


def test_a_missed_month_is_caught_up_once_each(session):
    # Given the same invoice, and no run between the due date and 1 March 2028
    interest(session)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    session.commit()
    # When it runs on 1 March, twice
    first, again = run(session, c, date(2028, 3, 1)), run(session, c, date(2028, 3, 1))
    # Then the three whole months get their lines at once, and the rerun adds nothing
    assert (first.fees_added, first.amount) == (3, D("24.98"))
    assert (again.fees_added, again.failures) == (0, [])
    assert len(lines(session, inv)) == 3 and charges(session) == 3


def test_thirty_and_thirty_one_day_months(session):
    interest(session)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 3, 31), lines=[("Server", "1000.00", False)])
    session.commit()
    run(session, c, date(2027, 6, 1))
    assert [a for _, a in lines(session, inv)] == [D("9.86"), D("10.19")]  # April 30 days, May 31


def test_interest_is_rounded_to_the_invoice_currency(session):
    # 100,000 JPY at 12 % for 29 days: 953.42… -> 953
    interest(session)
    yen = f.currency(session, "JPY", minor_units=0)
    c = f.client(session, currency_id=yen.id)
    inv = f.invoice(session, c, due=date(2028, 1, 31), lines=[("Server", "100000", False)])
    session.commit()
    run(session, c, date(2028, 3, 1))
    assert lines(session, inv) == [("Interest 2028-02-01 – 2028-02-29", D("953"))]


def test_interest_waits_for_late_fee_days_then_charges_from_the_due_date(session):
    # Given a 30-day grace: due 20 Jan 2027, the invoice is 30 days late on 19 February
    interest(session, late_fee_days=30)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 1, 20), lines=[("Server", "1000.00", False)])
    session.commit()
    # When it runs on 1 and 18 February (not late enough), then on 19 February
    assert run(session, c, date(2027, 2, 1)).fees_added == 0
    assert run(session, c, date(2027, 2, 18)).fees_added == 0
    run(session, c, date(2027, 2, 19))
    # Then January is charged from the 21st: 11 days
    assert lines(session, inv) == [("Interest 2027-01-21 – 2027-01-31", D("3.62"))]  # 3.6164…


# --- the balance: partial payments, credit, tax ---------------------------------------------------

def test_payments_lower_the_balance_from_the_month_after_they_came(session):
    # Given 1,000.00 due 15 Dec 2027; 400.00 paid on 10 January, 100.00 of credit on 15 February
    interest(session)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    pay(session, inv, "400.00", date(2028, 1, 10))
    session.add(CreditHistory(client_id=c.id, date=date(2028, 2, 15), description="Credit Applied",
                              amount=D("-100.00"), balance_after=D("0"), invoice_id=inv.id))
    inv.credit_applied = D("100.00")
    inv.balance_due = D("500.00")
    session.commit()
    # When the months up to March are charged
    run(session, c, date(2028, 4, 1))
    # Then each month bears interest on the balance at its start: 1000, 1000, 600, 500
    assert [a for _, a in lines(session, inv)] == [D("5.26"), D("10.19"), D("5.72"), D("5.10")]
    assert [r.balance for r in session.scalars(select(InvoiceInterestCharge)
                                               .order_by(InvoiceInterestCharge.period_start))] == [
        D("1000.00"), D("1000.00"), D("600.00"), D("500.00")]
    inv = fresh(session, inv)
    assert (inv.total, inv.balance_due) == (D("1026.27"), D("526.27"))


def test_money_paid_without_a_dated_record_counts_as_paid_before(session):
    # amount_paid 250.00 set by another application, no transaction: the balance is 750.00 from the start
    interest(session)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2028, 1, 31), lines=[("Server", "1000.00", False)], amount_paid="250.00")
    session.commit()
    run(session, c, date(2028, 3, 1))
    assert [a for _, a in lines(session, inv)] == [D("7.15")]  # 750 × 12 × 29 / 36500 = 7.150…


def test_interest_never_bears_interest_and_is_taxed_at_the_invoices_rates(session):
    # Given 100.00 + 20 % VAT = 120.00 due 31 Dec 2027, taxed interest lines
    interest(session, late_fee_taxed=True)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 12, 31), lines=[("Hosting", "100.00", True)], rate1=VAT)
    session.commit()
    run(session, c, date(2028, 2, 1))
    run(session, c, date(2028, 3, 1))
    # Then February's line is on 120.00 again (not on 120.00 + January's interest)
    assert [a for _, a in lines(session, inv)] == [D("1.22"), D("1.14")]
    inv = fresh(session, inv)
    # lines 102.36, VAT 20.47 (on the invoice total, rounded once), total 122.83
    assert (inv.subtotal, inv.tax1, inv.total, inv.balance_due) == (D("102.36"), D("20.47"), D("122.83"),
                                                                    D("122.83"))


def test_interest_stops_when_the_invoice_is_paid(session):
    interest(session)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    session.commit()
    run(session, c, date(2028, 1, 1))
    inv = fresh(session, inv)
    inv.status, inv.date_paid = "Paid", date(2028, 1, 20)
    session.commit()
    assert run(session, c, date(2028, 3, 1)).fees_added == 0
    assert len(lines(session, inv)) == 1


# --- the cap --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("cap_type", "cap"), [("amount", "12.00"), ("percentage", "1.2")])
def test_the_line_that_reaches_the_cap_is_cut_and_no_line_follows(session, cap_type, cap):
    # Given a cap of 12.00 (or 1.2 % of 1,000.00)
    interest(session, late_fee_interest_cap_type=cap_type, late_fee_interest_cap=cap)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    session.commit()
    # When December (5.26) is charged, then January (10.19) would pass the cap
    run(session, c, date(2028, 1, 1))
    reached = run(session, c, date(2028, 2, 1))
    # Then January's line is cut to 6.74, and later months get nothing
    assert (reached.fees_added, reached.amount) == (1, D("6.74"))
    assert [a for _, a in lines(session, inv)] == [D("5.26"), D("6.74")]
    after = [run(session, c, day).fees_added for day in (date(2028, 3, 1), date(2028, 4, 1), date(2028, 4, 2))]
    assert after == [0, 0, 0]
    assert charges(session) == 2 and fresh(session, inv).total == D("1012.00")


def test_a_cap_reached_in_a_catch_up_is_reached_once(session):
    interest(session, late_fee_interest_cap_type="percentage", late_fee_interest_cap="1")
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    session.commit()
    run(session, c, date(2028, 6, 1))
    assert [a for _, a in lines(session, inv)] == [D("5.26"), D("4.74")]  # 1 % of 1,000.00 = 10.00


# --- once, and one regime per invoice -------------------------------------------------------------

def test_a_month_recorded_by_another_path_is_not_charged_again(session):
    interest(session)
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2028, 1, 31), lines=[("Server", "1000.00", False)])
    session.add(InvoiceInterestCharge(invoice_id=inv.id, period_start=date(2028, 2, 1), first_day=date(2028, 2, 1),
                                      period_end=date(2028, 2, 29), days=29, balance=D("1000"), rate=D("12"),
                                      amount=D("9.53"), applied_on=date(2028, 3, 1)))
    session.commit()
    result = run(session, c, date(2028, 3, 2))
    assert (result.fees_added, result.failures) == (0, [])
    assert lines(session, inv) == []


def test_a_one_off_late_fee_and_interest_never_meet_on_one_invoice(session):
    # Given an invoice with a fixed late fee, and one that bears interest
    c = f.client(session)
    fixed = f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    session.add(InvoiceLateFee(invoice_id=fixed.id, amount=D("5.00"), applied_on=date(2027, 12, 20)))
    bearing = f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    interest(session)
    session.commit()
    # When interest runs, then the fixed fee mode does
    run(session, c, date(2028, 1, 1))
    save_settings(session, late_fee_type="fixed", late_fee_amount="5.00")
    session.commit()
    run(session, c, date(2028, 1, 2))
    # Then the invoice with the fee got no interest, and the one with interest no fee
    assert lines(session, fixed) == []
    assert lines(session, bearing) == [("Interest 2027-12-16 – 2027-12-31", D("5.26"))]


@pytest.mark.parametrize(("client", "invoice"), [
    ({"apply_late_fees": False}, {}), ({"status": "Closed"}, {}), ({}, {"status": "Paid"}),
    ({}, {"status": "Cancelled"}), ({}, {"status": "Draft"}), ({}, {"kind": "add_funds"}),
])
def test_only_unpaid_standard_invoices_of_clients_with_late_fees_bear_interest(session, client, invoice):
    interest(session)
    c = f.client(session, **client)
    f.invoice(session, c, due=date(2027, 12, 15), **invoice)
    session.commit()
    assert run(session, c, date(2028, 6, 1)).fees_added == 0 and charges(session) == 0


@pytest.mark.parametrize("settings", [{"late_fee_interest_rate": "0"}, {"late_fee_days": 0}])
def test_rate_zero_or_days_zero_mean_no_interest(session, settings):
    interest(session, **settings)
    c = f.client(session)
    f.invoice(session, c, due=date(2027, 12, 15))
    session.commit()
    assert run(session, c, date(2028, 6, 1)).fees_added == 0 and charges(session) == 0


def test_a_bad_cap_type_written_by_another_application_is_reported_and_adds_nothing(session):
    interest(session)
    session.add(Setting(name="late_fee_interest_cap_type", value='"lots"'))
    c = f.client(session)
    f.invoice(session, c, due=date(2027, 12, 15))
    session.commit()
    result = run(session, c, date(2028, 6, 1))
    [failure] = result.failures
    assert (failure.client_id, failure.field, failure.value) == (None, "settings.late_fee_interest_cap_type", "lots")
    assert charges(session) == 0


def test_a_dry_run_writes_nothing_and_predicts_the_real_run(session):
    interest(session)
    c = f.client(session)
    f.invoice(session, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    session.commit()
    preview = run(session, c, date(2028, 3, 1), dry_run=True)
    assert charges(session) == 0 and session.scalar(select(func.count()).select_from(InvoiceItem)) == 1
    real = run(session, c, date(2028, 3, 1))
    assert (preview.fees_added, preview.amount) == (3, D("24.98"))
    assert real.preview == preview.preview


# --- settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("values", "field"), [
    ({"late_fee_interest_rate": "-1"}, "settings.late_fee_interest_rate"),
    ({"late_fee_interest_rate": "100.01"}, "settings.late_fee_interest_rate"),
    ({"late_fee_interest_rate": "12.00001"}, "settings.late_fee_interest_rate"),
    ({"late_fee_interest_rate": 12.5}, "settings.late_fee_interest_rate"),
    ({"late_fee_interest_rate": "NaN"}, "settings.late_fee_interest_rate"),
    ({"late_fee_interest_cap_type": "some"}, "settings.late_fee_interest_cap_type"),
    ({"late_fee_interest_cap": "-5.00"}, "settings.late_fee_interest_cap"),
    ({"late_fee_interest_cap_type": "percentage", "late_fee_interest_cap": "150"}, "settings.late_fee_interest_cap"),
    ({"late_fee_type": "compound"}, "settings.late_fee_type"),
])
def test_bad_interest_settings_are_refused_naming_the_setting(session, values, field):
    with pytest.raises(ValidationError) as err:
        save_settings(session, **values)
    assert err.value.field == field
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Setting)) == 0


def test_a_percentage_cap_over_100_is_refused_when_the_type_changes_too(session):
    save_settings(session, late_fee_interest_cap="150.00")  # an amount cap of 150.00 is fine
    session.commit()
    with pytest.raises(ValidationError) as err:
        save_settings(session, late_fee_interest_cap_type="percentage")
    assert err.value.field == "settings.late_fee_interest_cap_type"


def test_good_interest_settings_are_saved(session):
    save_settings(session, late_fee_type="Interest", late_fee_interest_rate="99.9999",
                  late_fee_interest_cap_type="percentage", late_fee_interest_cap="100")
    session.commit()
    assert {s.name: s.value for s in session.scalars(select(Setting))} == {
        "late_fee_type": '"interest"', "late_fee_interest_rate": '"99.9999"',
        "late_fee_interest_cap_type": '"percentage"', "late_fee_interest_cap": '"100"'}


# --- two workers at once (PostgreSQL) -------------------------------------------------------------

def test_two_workers_at_once_add_one_line_per_month(pg_engine, pg_session):
    # Given an invoice with three whole months of interest due
    s = pg_session
    interest(s)
    c = f.client(s)
    inv = f.invoice(s, c, due=date(2027, 12, 15), lines=[("Server", "1000.00", False)])
    s.commit()
    barrier = threading.Barrier(3)
    added: list[int] = []
    errors: list[Exception] = []

    def worker() -> None:
        session = session_factory(pg_engine)()
        try:
            barrier.wait()
            added.append(apply_late_fees_for_clients(session, [c.id], date(2028, 3, 1)).fees_added)
            session.commit()
        except Exception as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            session.close()

    # When three workers run the same day at once
    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then one of them adds the three lines, the others nothing, and the totals count them once
    assert errors == [] and sorted(added) == [0, 0, 3]
    s.rollback()
    assert charges(s) == 3 and len(lines(s, inv)) == 3
    assert fresh(s, inv).total == D("1024.98")


def test_the_database_refuses_a_second_line_for_a_month(session):
    # Given the plan of a run, written and committed
    from sqlalchemy.exc import IntegrityError

    from billingworker.domain.collections.interest import plan_interest, write_interest
    from billingworker.domain.settings import load_settings

    interest(session)
    c = f.client(session)
    f.invoice(session, c, due=date(2028, 1, 31), lines=[("Server", "1000.00", False)])
    session.commit()
    settings = load_settings(session)
    planned = plan_interest(session, [c.id], date(2028, 3, 1), settings, {})
    write_interest(session, planned, date(2028, 3, 1), settings)
    session.commit()
    # When the same plan is written again (as a worker that planned before the commit would)
    # Then the primary key refuses it: no Python check stands in the way
    with pytest.raises(IntegrityError):
        write_interest(session, planned, date(2028, 3, 1), settings)
    session.rollback()
    assert charges(session) == 1


def test_a_payment_counts_on_the_installations_day_not_the_utc_day(session):
    from datetime import UTC, datetime

    from sqlalchemy import select

    from billingworker.clock import TIME_ZONE_INFO
    from billingworker.domain.collections.late_fees import apply_late_fees_for_clients
    from billingworker.domain.models import InvoiceItem, Transaction
    from billingworker.domain.settings import save_settings
    from tests import factories as f

    # Given an installation in New York, 1,000.00 due 2028-01-10 at 12 % a year, and 500.00 paid
    # on 31 January at 20:00 there (stored as 1 February 01:00 UTC, as apply_payment stores it)
    session.info[TIME_ZONE_INFO] = "America/New_York"
    save_settings(session, late_fee_days=1, late_fee_type="interest", late_fee_interest_rate="12")
    c = f.client(session)
    inv = f.invoice(session, c, due=date(2028, 1, 10), lines=[("Server", "1000.00", False)])
    session.add(Transaction(client_id=c.id, invoice_id=inv.id, date=datetime(2028, 2, 1, 1, tzinfo=UTC),
                            gateway="banktransfer", transaction_id="t1", amount_in=Decimal("500")))
    inv.amount_paid, inv.balance_due = Decimal("500"), Decimal("500")
    session.commit()

    # When interest is charged on 1 March
    apply_late_fees_for_clients(session, [c.id], date(2028, 3, 1))
    session.commit()

    # Then February bears interest on 500.00 (29 days: 500 x 12 % x 29 / 365 = 4.77), not on 1,000.00
    lines = [item.amount for item in session.scalars(
        select(InvoiceItem).where(InvoiceItem.item_type == "late_fee").order_by(InvoiceItem.id))]
    assert lines[-1] == Decimal("4.77")
