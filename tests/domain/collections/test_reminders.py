"""Overdue reminders (SPEC §5), on SQLite and PostgreSQL; the race on PostgreSQL only."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from billingworker.domain.billing.tax import Rate
from billingworker.domain.collections.reminders import send_overdue_reminders_for_clients
from billingworker.domain.messaging.emails import TEMPLATES
from billingworker.domain.messaging.rendering import render_outbox_email
from billingworker.domain.messaging.still_wanted import still_wanted
from billingworker.domain.models import (
    Client,
    Contact,
    Invoice,
    InvoiceReminder,
    OutboxEmail,
    ReminderStage,
)
from billingworker.domain.payments.payments import apply_payment
from billingworker.domain.settings import save_settings
from tests import factories as f
from tests.factories import count_rows as count
from tests.factories import race
from tests.factories import reminder_invoice as make_invoice
from tests.factories import table_counts as book

# With the default settings (7 / 1 / 8 / 15):
UNPAID_DAY = date(2026, 1, 13)
FIRST_DAY = date(2026, 1, 21)
SECOND_DAY = date(2026, 1, 28)
THIRD_DAY = date(2026, 2, 4)

UNPAID, FIRST, SECOND, THIRD = (ReminderStage.UNPAID, ReminderStage.FIRST_OVERDUE, ReminderStage.SECOND_OVERDUE,
                                ReminderStage.THIRD_OVERDUE)


def run(session: Session, *clients: Client, as_of: date):
    result = send_overdue_reminders_for_clients(session, [c.id for c in clients], as_of)
    session.commit()
    return result


def sent_each_day(session: Session, client: Client, first: date, last: date) -> dict[date, list[str]]:
    """Run the job once a day from ``first`` to ``last``; the templates queued on each day that queued any."""
    out = {}
    day = first
    while day <= last:
        result = run(session, client, as_of=day)
        if result.email_ids:
            out[day] = [session.get(OutboxEmail, i).template for i in result.email_ids]
        day += timedelta(days=1)
    return out


def rows(session: Session, invoice: Invoice) -> dict[str, str]:
    """stage -> status of the invoice's reminder rows."""
    return dict(session.execute(select(InvoiceReminder.stage, InvoiceReminder.status)
                                .where(InvoiceReminder.invoice_id == invoice.id)).all())


def test_the_templates_exist_under_the_stage_names():
    assert {stage.value for stage in ReminderStage} <= TEMPLATES


def test_each_stage_goes_on_its_day_once(session):
    # Given an Unpaid invoice due on the 20th, created well before, and the default settings
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    # When the job runs every day for a month
    sent = sent_each_day(session, c, date(2026, 1, 10), date(2026, 2, 20))
    # Then each stage went once, on its own day, and nothing on any other day
    assert sent == {UNPAID_DAY: [UNPAID.value], FIRST_DAY: [FIRST.value], SECOND_DAY: [SECOND.value],
                    THIRD_DAY: [THIRD.value]}
    assert rows(session, inv) == {s.value: "sent" for s in ReminderStage}
    # each reminder row points at its email, whose dedupe key names the stage and the invoice
    for r in session.execute(select(InvoiceReminder).where(InvoiceReminder.invoice_id == inv.id)).scalars():
        email = session.get(OutboxEmail, r.outbox_id)
        assert (email.template, email.dedupe_key, email.client_id) == (r.stage, f"{r.stage}:{inv.id}", c.id)


def test_the_stage_days_follow_the_settings(session):
    save_settings(session, unpaid_reminder_days=3, first_overdue_reminder_days=2, second_overdue_reminder_days=5,
                  third_overdue_reminder_days=9)
    c = f.client(session)
    make_invoice(session, c)
    session.commit()
    sent = sent_each_day(session, c, date(2026, 1, 10), date(2026, 2, 10))
    assert sent == {date(2026, 1, 17): [UNPAID.value], date(2026, 1, 22): [FIRST.value],
                    date(2026, 1, 25): [SECOND.value], date(2026, 1, 29): [THIRD.value]}


def test_zero_turns_a_stage_off(session):
    save_settings(session, unpaid_reminder_days=0, second_overdue_reminder_days=0)
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    sent = sent_each_day(session, c, date(2026, 1, 1), date(2026, 2, 20))
    assert sent == {FIRST_DAY: [FIRST.value], THIRD_DAY: [THIRD.value]}
    assert rows(session, inv) == {FIRST.value: "sent", THIRD.value: "sent"}


def test_every_stage_off_sends_nothing(session):
    save_settings(session, unpaid_reminder_days=0, first_overdue_reminder_days=0, second_overdue_reminder_days=0,
                  third_overdue_reminder_days=0)
    c = f.client(session)
    make_invoice(session, c)
    session.commit()
    assert run(session, c, as_of=date(2026, 6, 1)).email_ids == []
    assert count(session, InvoiceReminder) == 0


def test_missed_days_send_only_the_latest_stage_and_never_the_earlier_ones(session):
    # Given an invoice whose first days of reminders the job never ran on
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    # When the job first runs when the second notice is due, then daily after
    first_run = run(session, c, as_of=date(2026, 2, 1))
    later = sent_each_day(session, c, date(2026, 2, 2), date(2026, 3, 1))
    # Then that run sends the second notice alone, the earlier stages are skipped for good,
    # and only the third follows on its day
    assert [session.get(OutboxEmail, i).template for i in first_run.email_ids] == [SECOND.value]
    assert first_run.preview == [{"client_id": c.id, "invoice_id": inv.id, "stage": SECOND.value,
                                  "skipped": [UNPAID.value, FIRST.value]}]
    assert later == {THIRD_DAY: [THIRD.value]}
    assert rows(session, inv) == {UNPAID.value: "skipped", FIRST.value: "skipped", SECOND.value: "sent",
                                  THIRD.value: "sent"}
    assert count(session, OutboxEmail) == 2


def test_a_long_missed_period_sends_one_notice_not_a_burst(session):
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    result = run(session, c, as_of=date(2026, 5, 1))
    assert [session.get(OutboxEmail, i).template for i in result.email_ids] == [THIRD.value]
    assert rows(session, inv)[THIRD.value] == "sent"
    assert sorted(s for s, st in rows(session, inv).items() if st == "skipped") == sorted(
        [UNPAID.value, FIRST.value, SECOND.value])


def test_running_twice_on_a_day_sends_once(session):
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    first = run(session, c, as_of=FIRST_DAY)
    second = run(session, c, as_of=FIRST_DAY)
    assert len(first.email_ids) == 1 and second.email_ids == []
    assert second.failures == [], "already done is not an error"
    assert count(session, OutboxEmail) == 1
    assert rows(session, inv) == {UNPAID.value: "skipped", FIRST.value: "sent"}


def test_a_stage_row_alone_stops_that_stage_and_the_earlier_ones(session):
    # Given another application already recorded the second notice (e.g. sent by hand)
    c = f.client(session)
    inv = make_invoice(session, c)
    session.add(InvoiceReminder(invoice_id=inv.id, stage=SECOND.value, status="sent", sent_on=date(2026, 1, 19)))
    session.commit()
    # Then neither the first (earlier) nor the second is sent; the third still comes
    sent = sent_each_day(session, c, date(2026, 1, 10), date(2026, 2, 10))
    assert sent == {THIRD_DAY: [THIRD.value]}


@pytest.mark.parametrize("status", ["Paid", "Cancelled", "Draft", "Refunded", "Collections", "Payment Pending"])
def test_only_unpaid_invoices_get_reminders(session, status):
    c = f.client(session)
    make_invoice(session, c, status=status)
    session.commit()
    assert sent_each_day(session, c, date(2026, 1, 10), date(2026, 2, 10)) == {}
    assert count(session, InvoiceReminder) == 0


def test_an_add_funds_invoice_gets_no_overdue_notice(session):
    c = f.client(session)
    make_invoice(session, c, kind="add_funds")
    session.commit()
    assert run(session, c, as_of=THIRD_DAY).email_ids == []


def test_the_client_flag_off_gets_none_and_a_closed_client_neither(session):
    quiet = f.client(session, send_overdue_reminders=False)
    closed = f.client(session, status="Closed")
    loud = f.client(session)
    for c in (quiet, closed, loud):
        make_invoice(session, c)
    session.commit()
    result = run(session, quiet, closed, loud, as_of=FIRST_DAY)
    assert [line["client_id"] for line in result.preview] == [loud.id]
    assert count(session, OutboxEmail) == 1
    assert session.scalar(select(OutboxEmail.client_id)) == loud.id
    assert result.clients == 3 and result.succeeded_clients == {quiet.id, closed.id, loud.id}


def test_the_unpaid_reminder_is_not_sent_for_an_invoice_created_after_its_day(session):
    # Given an invoice created 3 days before it is due (the reminder day, 7 before, had passed)
    c = f.client(session)
    inv = make_invoice(session, c, created=date(2026, 1, 17))
    session.commit()
    # Then the "invoice created" email is the only notice before the due date
    sent = sent_each_day(session, c, date(2026, 1, 17), date(2026, 1, 24))
    assert sent == {FIRST_DAY: [FIRST.value]}
    assert rows(session, inv) == {UNPAID.value: "skipped", FIRST.value: "sent"}


def test_one_batch_handles_many_invoices_of_many_clients(session):
    a, b = f.client(session), f.client(session)
    a1 = make_invoice(session, a)
    a2 = make_invoice(session, a, due=date(2026, 1, 10))  # 11 days late on the 21st: second notice
    b1 = make_invoice(session, b, due=date(2026, 1, 6))  # 15 days late: third notice
    make_invoice(session, b, due=date(2026, 3, 1))  # not yet
    session.commit()
    result = run(session, a, b, as_of=FIRST_DAY)
    got = {(line["invoice_id"], line["stage"]) for line in result.preview}
    assert got == {(a1.id, FIRST.value), (a2.id, SECOND.value), (b1.id, THIRD.value)}
    assert result.emails_queued == 3


def test_a_clash_with_another_writer_costs_only_that_client(session):
    # Given another application queued a's first notice itself, without recording the stage
    a, b = f.client(session), f.client(session)
    a_inv, b_inv = make_invoice(session, a), make_invoice(session, b)
    session.add(OutboxEmail(template=FIRST.value, client_id=a.id, context="{}",
                            dedupe_key=f"{FIRST.value}:{a_inv.id}"))
    session.commit()
    # When the batch runs, the outbox's dedupe key refuses a's notice
    result = run(session, a, b, as_of=FIRST_DAY)
    # Then a is reported and left untouched, and b still gets its notice
    assert [(x.client_id, x.field) for x in result.failures] == [(a.id, "invoice_reminders")]
    assert result.succeeded_clients == {b.id}
    assert [line["invoice_id"] for line in result.preview] == [b_inv.id]
    assert rows(session, a_inv) == {} and rows(session, b_inv) == {UNPAID.value: "skipped", FIRST.value: "sent"}
    assert count(session, OutboxEmail) == 2


def test_a_dry_run_writes_nothing_and_predicts_the_real_run(session):
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    before = book(session)
    preview = send_overdue_reminders_for_clients(session, [c.id], SECOND_DAY, dry_run=True)
    assert book(session) == before, "nothing written, even before the caller rolls back"
    session.rollback()
    assert preview.email_ids == []
    assert preview.preview == [{"client_id": c.id, "invoice_id": inv.id, "stage": SECOND.value,
                                "skipped": [UNPAID.value, FIRST.value]}]
    real = run(session, c, as_of=SECOND_DAY)
    assert real.preview == preview.preview and len(real.email_ids) == 1


NOW_WANTED = datetime(2026, 1, 20, 9, tzinfo=UTC)


def test_reminder_still_wanted_is_false_once_the_invoice_is_paid(session):
    # Given a first overdue notice queued for an Unpaid invoice
    c = f.client(session)
    inv = make_invoice(session, c)
    session.commit()
    [email_id] = run(session, c, as_of=FIRST_DAY).email_ids
    template = session.get(OutboxEmail, email_id).template
    assert still_wanted(session, template, {"invoice_id": inv.id}, now=NOW_WANTED) is True
    # When the invoice is paid before the email is sent
    apply_payment(session, inv.id, Decimal("10.00"), gateway="bank", transaction_id="t1", as_of=FIRST_DAY,
                  now=datetime(2026, 1, 21, 10, tzinfo=UTC))
    session.commit()
    # Then the reminder is no longer wanted, while other emails about the invoice still are
    assert still_wanted(session, template, {"invoice_id": inv.id}, now=NOW_WANTED) is False
    assert still_wanted(session, "payment_confirmation", {"invoice_id": inv.id}, now=NOW_WANTED) is True
    assert still_wanted(session, "invoice_created", {"invoice_id": inv.id}, now=NOW_WANTED) is True


def test_reminder_still_wanted_for_each_stage_and_state(session):
    c = f.client(session)
    unpaid, cancelled = make_invoice(session, c), make_invoice(session, c, status="Cancelled")
    quiet = f.client(session, send_overdue_reminders=False)
    muted = make_invoice(session, quiet)
    session.commit()
    for stage in ReminderStage:
        assert still_wanted(session, stage.value, {"invoice_id": unpaid.id}, now=NOW_WANTED) is True
        assert still_wanted(session, stage.value, {"invoice_id": cancelled.id}, now=NOW_WANTED) is False
        assert still_wanted(session, stage.value, {"invoice_id": muted.id}, now=NOW_WANTED) is False
    gone = unpaid.id
    session.execute(delete(Invoice).where(Invoice.id == gone))
    session.commit()
    assert still_wanted(session, THIRD.value, {"invoice_id": gone}, now=NOW_WANTED) is False


@pytest.mark.parametrize("stage", list(ReminderStage))
def test_each_reminder_renders_with_the_invoice_lines_and_copies_invoice_contacts(session, stage):
    c = f.client(session, first_name="Grace", email="grace@example.com")
    session.add(Contact(client_id=c.id, email="accounts@example.com", invoice_emails=True))
    save_settings(session, company_name="Acme Hosting", system_url="https://my.acme.test")
    inv = make_invoice(session, c, lines=[("Shared Hosting - example.com", "10.00", True), ("Late Fee", "5.00", False)],
                       rate1=Rate("VAT", Decimal("20")))
    session.commit()
    day = {UNPAID: UNPAID_DAY, FIRST: FIRST_DAY, SECOND: SECOND_DAY, THIRD: THIRD_DAY}[stage]
    [email_id] = run(session, c, as_of=day).email_ids
    email = render_outbox_email(session, session.get(OutboxEmail, email_id))
    assert email.template == stage.value
    assert email.to == ["grace@example.com"] and email.cc == ["accounts@example.com"]
    assert f"#{inv.number}" in email.subject
    for body in (email.text, email.html):
        assert "Grace" in body and "Late Fee" in body and "Shared Hosting - example.com" in body
        assert "$17.00 USD" in body  # 10.00 + 5.00 + VAT 2.00
        assert "2026-01-20" in body
        assert f"https://my.acme.test/viewinvoice.php?id={inv.id}" in body
    assert ("suspended" in email.text) is (stage is THIRD)


def test_two_workers_at_once_send_each_stage_once(pg_engine, pg_session):
    s = pg_session
    c = f.client(s)
    inv = make_invoice(s, c)
    s.commit()

    def remind(session):
        return len(send_overdue_reminders_for_clients(session, [c.id], SECOND_DAY).email_ids)

    queued = race(pg_engine, remind, remind, remind)
    assert sorted(queued) == [0, 0, 1]
    s.rollback()
    assert count(s, OutboxEmail) == 1
    assert rows(s, inv) == {UNPAID.value: "skipped", FIRST.value: "skipped", SECOND.value: "sent"}
