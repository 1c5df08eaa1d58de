"""Reconciliation (SPEC §15, issue 12): books made by the real billing code pass every check; each
check finds a defect planted in them and names its rows. SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete, func, select, update

from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.models import (
    Client,
    DailyRun,
    Invoice,
    InvoiceItem,
    InvoiceStatus,
    JobFailure,
    JobReceipt,
    OutboxEmail,
    Service,
)
from billingworker.domain.models.runs import DailyRunReconciliation
from billingworker.domain.payments.credit import change_credit
from billingworker.domain.payments.payments import apply_payment
from billingworker.domain.reports.reconciliation import (
    CHECKS,
    EMAIL_SETTLE_AFTER,
    Finding,
    reconcile,
    record_reconciliation,
    recorded_reconciliation,
)
from billingworker.domain.runs import daily_run
from tests import factories as f

DAY = date(2026, 1, 10)
NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)


@dataclass
class Book:
    a: Client
    b: Client
    c: Client
    a_service: Service
    b_service: Service
    b_invoice: Invoice


def make_book(session) -> Book:
    """Three clients billed on DAY by the real generation: A with a service, an addon, a domain
    and a billable item; B's overdue service, paid; C's service partly paid from credit."""
    a, b, c = f.client(session), f.client(session), f.client(session)
    a_service = f.service(session, a, next_due_date=DAY + timedelta(days=5))
    f.addon(session, a_service, next_due_date=DAY + timedelta(days=5))
    f.domain(session, a, next_due_date=DAY + timedelta(days=10))
    f.billable(session, a, due_date=DAY - timedelta(days=1))
    b_service = f.service(session, b, next_due_date=DAY - timedelta(days=3), amount=Decimal("20.00"))
    f.service(session, c, next_due_date=DAY + timedelta(days=2), amount=Decimal("10.00"))
    change_credit(session, c.id, Decimal("5.00"), "Goodwill", as_of=DAY, source="admin:1")
    session.commit()
    generate_for_clients(session, [a.id, b.id, c.id], DAY)
    session.commit()
    b_invoice = session.execute(select(Invoice).where(Invoice.client_id == b.id)).scalar_one()
    apply_payment(session, b_invoice.id, Decimal("20.00"), gateway="stripe", transaction_id="ch_1", as_of=DAY,
                  now=NOW)
    session.commit()
    return Book(a, b, c, a_service, b_service, b_invoice)


def check(session, name: str, *, now: datetime = NOW) -> list[Finding]:
    return [x for x in reconcile(session, DAY, now=now).findings if x.check == name]


def test_books_made_by_the_billing_code_are_clean(session):
    # Given books the real generation, payment and credit code wrote
    make_book(session)

    # When they are reconciled
    result = reconcile(session, DAY, now=NOW)

    # Then every check passes, and the result says so per check
    assert result.findings == []
    assert result.clean
    assert [c["check"] for c in result.as_dict()["checks"]] == list(CHECKS)
    assert all(c["ok"] for c in result.as_dict()["checks"])


def test_a_thing_due_but_never_invoiced_is_found(session):
    # Given the books, and a service added after the run with a due date already past
    book = make_book(session)
    late = f.service(session, book.a, next_due_date=DAY - timedelta(days=2))
    session.commit()

    # When reconciled
    [finding] = check(session, "due_billed")

    # Then the service is named, not explained
    assert (finding.table, finding.ids, finding.explained) == ("services", (late.id,), False)
    assert "due 2026-01-08 is not invoiced" in finding.reason


def test_an_unbilled_thing_of_a_parked_or_failing_client_is_explained(session):
    # Given two clients whose due services were not billed: one parked, one with a failure of the day's run
    parked = f.client(session, parked_at=NOW, parked_reason="generate: no currency")
    failing = f.client(session)
    p = f.service(session, parked, next_due_date=DAY)
    q = f.service(session, failing, next_due_date=DAY)
    run = DailyRun(run_date=DAY, status="succeeded", trigger="test", started_at=NOW)
    session.add(run)
    session.flush()
    session.add(JobFailure(actor="generate_due_invoices", client_id=failing.id, error="Failed",
                           reason="currency_id: is missing", created_at=NOW, run_id=run.id))
    session.commit()

    # When reconciled
    result = reconcile(session, DAY, now=NOW)

    # Then both are explained findings, and the books are clean
    assert {(x.ids, x.explained) for x in result.findings} == {((p.id,), True), ((q.id,), True)}
    assert result.clean
    assert result.counts()["due_billed"] == {"findings": 0, "explained": 2}


def test_a_billed_thing_whose_next_invoice_date_did_not_move_is_found(session):
    book = make_book(session)
    session.execute(update(Service).where(Service.id == book.a_service.id)
                    .values(next_invoice_date=DAY + timedelta(days=5)))
    session.commit()

    [finding] = check(session, "due_billed")

    assert (finding.table, finding.ids) == ("services", (book.a_service.id,))
    assert "next_invoice_date did not move" in finding.reason


def test_a_period_billed_twice_is_found_with_both_items(session):
    # Given A's service billed a second time for an overlapping period, on an invoice of its own
    book = make_book(session)
    first = session.execute(select(InvoiceItem).where(InvoiceItem.item_type == "service",
                                                      InvoiceItem.item_id == book.a_service.id)).scalar_one()
    twin = Invoice(client_id=book.a.id, number=None, status=InvoiceStatus.DRAFT, date_created=DAY, date_due=DAY)
    session.add(twin)
    session.flush()
    second = InvoiceItem(invoice_id=twin.id, client_id=book.a.id, item_type="service", item_id=book.a_service.id,
                         description="again", amount=Decimal("0"), due_date=first.due_date + timedelta(days=3),
                         period_end=first.period_end + timedelta(days=3))
    session.add(second)
    session.commit()

    # When reconciled
    findings = check(session, "periods_once")

    # Then the two items are named together, and the second one as unguarded
    assert [(x.table, x.ids) for x in findings] == [("invoice_items", (first.id, second.id)),
                                                  ("invoice_items", (second.id,))]
    assert "billed more than once" in findings[0].reason
    assert "without its billed_periods row" in findings[1].reason


def test_a_gap_in_the_invoice_numbers_is_found(session):
    # Given the numbered invoices 1..5, and number 2 deleted by hand
    book = make_book(session)
    by_number = dict(session.execute(select(Invoice.number, Invoice.id)).all())
    assert sorted(by_number) == [1, 2, 3, 4, 5]
    session.execute(delete(InvoiceItem).where(InvoiceItem.invoice_id == by_number[2]))
    session.execute(delete(Invoice).where(Invoice.id == by_number[2]))
    session.commit()

    # When reconciled
    [finding] = check(session, "numbers_gap_free")

    # Then the gap is said, with the invoices on either side of it
    assert finding.ids == (by_number[1], by_number[3]) and not finding.explained
    assert finding.reason.startswith("number 2 missing")
    assert book  # the books stay otherwise as made


def test_a_gap_left_by_a_deleted_client_is_explained(session):
    # Given the last invoice (number 5) gone with its client, as delete_client's receipt counts
    make_book(session)
    by_number = dict(session.execute(select(Invoice.number, Invoice.id)).all())
    session.execute(delete(InvoiceItem).where(InvoiceItem.invoice_id == by_number[5]))
    session.execute(delete(Invoice).where(Invoice.id == by_number[5]))
    session.add(JobReceipt(key="delete_client:client:99", actor="delete_client",
                           result='{"deleted": {"invoices": 1}}'))
    session.commit()

    # When reconciled
    [finding] = check(session, "numbers_gap_free")

    # Then the gap is explained by the deletion
    assert finding.explained and finding.ids == (by_number[4],)
    assert "number 5 after the last invoice" in finding.reason


def test_a_deleted_clients_numbers_explain_their_own_gaps_and_no_other(session):
    # Given number 5 gone with its client (its receipt names it), and number 2 deleted by hand,
    # while a deleted client's two Drafts (no numbers) are in the receipt's count too
    make_book(session)
    by_number = dict(session.execute(select(Invoice.number, Invoice.id)).all())
    for number in (2, 5):
        session.execute(delete(InvoiceItem).where(InvoiceItem.invoice_id == by_number[number]))
        session.execute(delete(Invoice).where(Invoice.id == by_number[number]))
    session.add(JobReceipt(key="delete_client:client:99", actor="delete_client",
                           result='{"deleted": {"invoices": 3}, "invoice_numbers": [5]}'))
    session.commit()

    # When reconciled
    findings = {f.reason.split(" ")[1]: f for f in check(session, "numbers_gap_free")}

    # Then the deleted client's number is explained, the other gap is a finding
    assert findings["5"].explained and not findings["2"].explained


def test_a_paid_invoice_that_did_not_move_the_due_date_is_found(session):
    # Given B's paid invoice, and its service's next due date put back on the period it paid
    book = make_book(session)
    session.execute(update(Service).where(Service.id == book.b_service.id)
                    .values(next_due_date=DAY - timedelta(days=3)))
    session.commit()

    # When reconciled
    [finding] = check(session, "paid_moved_due_dates")

    # Then the paid invoice is named, with the service
    assert (finding.table, finding.ids) == ("invoices", (book.b_invoice.id,))
    assert f"service {book.b_service.id}" in finding.reason


def test_a_credit_balance_without_its_history_is_found(session):
    book = make_book(session)
    session.execute(update(Client).where(Client.id == book.a.id).values(credit_balance=Decimal("7.50")))
    session.commit()

    [finding] = check(session, "credit_matches_history")

    assert (finding.table, finding.ids) == ("clients", (book.a.id,))
    assert finding.reason == "credit balance 7.50 but its credit history sums to 0.00"


def test_a_stuck_email_and_a_failure_without_reason_are_found(session):
    # Given an email queued two hours ago, one queued a minute ago, and one failed without a reason
    book = make_book(session)
    stuck = OutboxEmail(client_id=book.a.id, template="invoice_created", created_at=NOW - timedelta(hours=2))
    fresh = OutboxEmail(client_id=book.a.id, template="invoice_created", created_at=NOW - timedelta(minutes=1))
    silent = OutboxEmail(client_id=book.a.id, template="invoice_created", status="failed", last_error="",
                         created_at=NOW - timedelta(days=1))
    session.add_all([stuck, fresh, silent])
    session.commit()

    # When reconciled at NOW
    findings = check(session, "emails_settled")

    # Then the stuck one and the silent failure are named; the fresh one is on its way
    assert [(x.table, x.ids) for x in findings] == [("email_outbox", (stuck.id,)), ("email_outbox", (silent.id,))]
    assert "still queued more than 60 minutes" in findings[0].reason
    assert EMAIL_SETTLE_AFTER == timedelta(hours=1)


def test_an_invoice_whose_lines_do_not_add_up_is_found(session):
    book = make_book(session)
    session.execute(update(Invoice).where(Invoice.id == book.b_invoice.id).values(total=Decimal("21.00")))
    session.commit()

    [finding] = check(session, "totals_add_up")

    assert (finding.table, finding.ids) == ("invoices", (book.b_invoice.id,))
    assert "total 21.00 is not subtotal 20.00 + tax 0.00 + tax2 0.00" in finding.reason


def test_credit_applied_without_its_history_is_found(session):
    book = make_book(session)
    c_invoice = session.execute(select(Invoice).where(Invoice.client_id == book.c.id)).scalar_one()
    assert c_invoice.credit_applied == Decimal("5.00")
    session.execute(update(Invoice).where(Invoice.id == c_invoice.id)
                    .values(credit_applied=Decimal("6.00"), balance_due=Decimal("4.00")))
    session.commit()

    [finding] = check(session, "totals_add_up")

    assert finding.ids == (c_invoice.id,)
    assert "credit applied 6.00 but the credit history spent 5.00 on it" in finding.reason


def test_the_result_is_recorded_with_the_run_and_read_back(session):
    # Given a run and a reconciliation with one finding
    book = make_book(session)
    run = DailyRun(run_date=DAY, status="succeeded", trigger="test", started_at=NOW)
    session.add(run)
    session.execute(update(Client).where(Client.id == book.a.id).values(credit_balance=Decimal("1.00")))
    session.flush()
    result = reconcile(session, DAY, now=NOW)

    # When it is recorded twice (a repeated finish)
    record_reconciliation(session, run.id, result)
    record_reconciliation(session, run.id, result)
    session.commit()

    # Then one record, read back with its counts and the finding's rows
    recorded = recorded_reconciliation(session)
    assert recorded is not None and recorded.run_id == run.id and recorded.clean is False
    assert recorded.counts["credit_matches_history"] == {"findings": 1, "explained": 0}
    assert recorded.findings[0]["ids"] == [book.a.id]


def test_the_finishing_step_of_a_daily_run_reconciles_and_records(session):
    # Given a run whose tasks are all done, on books with one defect
    book = make_book(session)
    session.execute(update(Client).where(Client.id == book.b.id).values(credit_balance=Decimal("3.00")))
    run_id = daily_run.start_run(session, DAY, trigger="test", now=NOW)
    session.commit()
    for _ in daily_run.TASK_NAMES:
        step = daily_run.next_step(session, run_id, now=NOW)
        assert step.kind == "start_task"
        daily_run.set_batches(session, run_id, step.task, [])
    session.commit()

    # When the run is advanced past its last task
    step = daily_run.next_step(session, run_id, now=NOW)
    session.commit()

    # Then it succeeded, and the reconciliation is recorded with it
    assert step.kind == "finish" and step.books_clean is False
    recorded = recorded_reconciliation(session, run_id)
    assert recorded is not None and recorded.as_of == DAY
    assert recorded.counts["credit_matches_history"]["findings"] == 1


@pytest.mark.parametrize("continuous", [False, True])
def test_a_catch_up_period_left_for_tomorrow_is_explained(session, continuous):
    # Given a monthly service two periods behind, billed one period today (SPEC §4: one a day)
    from billingworker.domain.settings import save_settings

    save_settings(session, continuous_invoice_generation=continuous)
    c = f.client(session)
    s = f.service(session, c, next_due_date=DAY - timedelta(days=40))
    session.commit()
    generate_for_clients(session, [c.id], DAY)
    session.commit()
    if not continuous:  # the period billed today is paid: the next one is due, and waits for tomorrow
        inv = session.execute(select(Invoice)).scalar_one()
        apply_payment(session, inv.id, Decimal(inv.total), gateway="stripe", transaction_id="ch_9", as_of=DAY, now=NOW)
        session.commit()

    # When reconciled
    findings = check(session, "due_billed")

    # Then the next period is an explained finding
    assert [(x.ids, x.explained) for x in findings] == [((s.id,), True)]
    assert "one period per thing per day" in findings[0].reason


def test_two_advances_finishing_one_run_at_once_record_one_reconciliation(pg_engine):
    # Given a run on PostgreSQL whose tasks are all done
    from billingworker.db import session_factory

    new_session = session_factory(pg_engine)
    with new_session() as session:
        make_book(session)
        run_id = daily_run.start_run(session, DAY, trigger="test", now=NOW)
        session.commit()
        for _ in daily_run.TASK_NAMES:
            daily_run.set_batches(session, run_id, daily_run.next_step(session, run_id, now=NOW).task, [])
        session.commit()
    barrier = threading.Barrier(2)
    steps: list[str] = []

    def advance() -> None:
        with new_session() as s:
            barrier.wait()
            steps.append(daily_run.next_step(s, run_id, now=NOW).kind)
            s.commit()

    # When two workers advance it at the same instant (a redelivered advance_daily_run)
    threads = [threading.Thread(target=advance) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    # Then one finished it (the run row's lock), the other found it done: one record, clean books
    assert sorted(steps) == ["done", "finish"]
    with new_session() as session:
        assert session.scalar(select(func.count()).select_from(DailyRunReconciliation)) == 1
        assert recorded_reconciliation(session, run_id).clean is True


def test_paying_the_later_period_first_is_not_a_finding(session):
    from billingworker.domain.models import Invoice
    from billingworker.domain.reports.reconciliation import reconcile
    from billingworker.domain.settings import save_settings

    # Given continuous invoicing billed January and February, and the client paid February first
    save_settings(session, continuous_invoice_generation=True)
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 20), next_invoice_date=date(2026, 1, 20),
              amount=Decimal("10.00"))
    session.commit()
    generate_for_clients(session, [c.id], date(2026, 1, 10))
    session.commit()
    generate_for_clients(session, [c.id], date(2026, 2, 10))
    session.commit()
    january, february = session.scalars(select(Invoice).where(Invoice.client_id == c.id).order_by(Invoice.id))
    apply_payment(session, february.id, Decimal(february.total), gateway="stripe", transaction_id="ch_x",
                  as_of=date(2026, 2, 11), now=datetime(2026, 2, 11, 12, tzinfo=UTC))
    session.commit()

    # When the books are checked, January still owed
    result = reconcile(session, date(2026, 2, 11))

    # Then the due date held back by January is no finding
    assert [x for x in result.findings if x.check == "paid_moved_due_dates"] == []
    # But once January is paid too and the due date still did not move, it is one
    apply_payment(session, january.id, Decimal(january.total), gateway="stripe", transaction_id="ch_y",
                  as_of=date(2026, 2, 12), now=datetime(2026, 2, 12, 12, tzinfo=UTC))
    session.execute(update(Service).where(Service.client_id == c.id).values(next_due_date=date(2026, 1, 20)))
    session.commit()
    assert {x.check for x in reconcile(session, date(2026, 2, 12)).findings if not x.explained} == {
        "paid_moved_due_dates"}


def test_only_a_failure_to_invoice_that_day_explains_a_thing_left_unbilled(session):
    from billingworker.domain.reports.reconciliation import reconcile

    # Given a service due and never invoiced, and that day a failure that is not about invoicing
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 8))
    session.add(JobFailure(actor="remove_pay_method", client_id=c.id, error="PayMethodKept", field="pay_method_id",
                           reason="kept: refused", created_at=datetime(2026, 1, 10, 9)))
    session.commit()

    # When the books are checked
    result = reconcile(session, date(2026, 1, 10))

    # Then the unbilled service is a finding, not explained away
    unbilled = [x for x in result.findings if x.check == "due_billed"]
    assert unbilled and not any(x.explained for x in unbilled) and not result.clean
