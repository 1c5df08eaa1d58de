"""The collection jobs through a real worker: reminders, late fees, captures."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import func, select

from billingworker.actors import apply_late_fees, capture_due_payments, deliver_email, send_overdue_reminders
from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.collections.reminders import send_overdue_reminders_for_clients
from billingworker.domain.models import InvoiceLateFee, InvoiceReminder, JobFailure, OutboxEmail, PaymentCapture
from billingworker.domain.payments.payments import apply_payment
from billingworker.domain.settings import save_settings
from tests import factories as f

from .conftest import dead_letters, drain


def overdue_client(session, **kw):
    c = f.client(session, **kw)
    f.service(session, c, next_due_date=date(2025, 12, 20), amount=Decimal("20.00"))
    session.commit()
    [invoice_id] = generate_for_clients(session, [c.id], date(2025, 12, 10), queue_email=False).invoice_ids
    session.commit()
    return c, invoice_id


def test_a_reminder_for_an_invoice_paid_before_delivery_is_not_sent(session, worker, mailer):
    c, invoice_id = overdue_client(session)
    queued = send_overdue_reminders_for_clients(session, [c.id], date(2025, 12, 22))
    session.commit()
    [email_id] = queued.email_ids
    apply_payment(session, invoice_id, Decimal("20.00"), gateway="bank", transaction_id="t1", as_of=date(2025, 12, 22),
                  now=datetime(2025, 12, 22, tzinfo=UTC), queue_email=False)
    session.commit()
    deliver_email.send(email_id)
    drain()
    assert mailer.sent == []
    assert session.get(OutboxEmail, email_id).status == "skipped"
    deliver_email.send(email_id)  # and never later either
    drain()
    assert mailer.sent == []


def test_send_overdue_reminders_job_once_per_stage(session, worker, mailer):
    c, _ = overdue_client(session)
    for _ in range(2):
        send_overdue_reminders.send(client_id=c.id, as_of="2025-12-22")
        drain()
    assert len(mailer.sent) == 1
    assert "overdue" in mailer.sent[0]["Subject"].lower()
    send_overdue_reminders.send(as_of="2025-12-29")  # fan-out: the second notice
    drain()
    assert len(mailer.sent) == 2
    assert session.scalar(select(func.count()).select_from(InvoiceReminder).where(
        InvoiceReminder.status == "sent")) == 2


def test_apply_late_fees_job_adds_one_fee(session, worker):
    save_settings(session, late_fee_days=3, late_fee_amount="10", late_fee_type="percentage",
                  late_fee_minimum="1.00")
    c, invoice_id = overdue_client(session)
    for _ in range(2):
        apply_late_fees.send(client_id=c.id, as_of="2025-12-24")
        drain()
    fee = session.get(InvoiceLateFee, invoice_id)
    assert fee.amount == Decimal("2.00")
    assert session.scalar(select(func.count()).select_from(InvoiceLateFee)) == 1


def test_capture_due_payments_job_charges_once(session, worker, mailer):
    c = f.client(session, auto_cc_processing=True)
    f.card(session, c)
    f.service(session, c, next_due_date=date(2026, 1, 10), amount=Decimal("30.00"), payment_method="testgateway")
    session.commit()
    generate_for_clients(session, [c.id], date(2026, 1, 1), queue_email=False)
    session.commit()
    for _ in range(2):
        capture_due_payments.send(client_id=c.id, as_of="2026-01-10")
        drain()
    captures = list(session.execute(select(PaymentCapture)).scalars())
    assert [(p.status, p.amount) for p in captures] == [("succeeded", Decimal("30.00"))]
    assert len(mailer.sent) == 1  # the payment confirmation


def test_collection_jobs_refuse_bad_input(session, worker):
    for job, kwargs, _field in [(send_overdue_reminders, {"client_id": 999}, "client_id"),
                               (apply_late_fees, {"as_of": "yesterday"}, "as_of"),
                               (capture_due_payments, {"client_id": -3}, "client_id")]:
        job.send(**kwargs)
        drain()
    assert len(dead_letters()) == 3
    fields = sorted(session.execute(select(JobFailure.field)).scalars())
    assert fields == ["as_of", "client_id", "client_id"]
