"""The invoicing jobs through a real worker: idempotent, fan-out, bad input dead-lettered."""

from __future__ import annotations

import threading
from datetime import date
from decimal import Decimal

import pytest
from dramatiq import Message
from sqlalchemy import func, select

from billingworker.actors import (
    apply_payment,
    broker,
    create_add_funds_invoice,
    create_invoice,
    generate_due_invoices,
    invoice_selected_items,
)
from billingworker.domain.models import (
    Client,
    EmailLog,
    Invoice,
    InvoiceItem,
    JobFailure,
    OutboxEmail,
    Service,
    Transaction,
)
from tests import factories as f

from .conftest import dead_letters, drain


def count(session, model, *where):
    return session.scalar(select(func.count()).select_from(model).where(*where))


def redeliver(message: Message) -> None:
    """The broker delivers the very same message again (at-least-once)."""
    broker.enqueue(message)


def test_generate_due_invoices_delivered_twice_bills_once_and_emails_once(session, worker, mailer):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 15))
    session.commit()
    message = generate_due_invoices.send(client_id=c.id)
    drain()
    redeliver(message)
    drain()
    assert count(session, Invoice) == 1
    assert len(mailer.sent) == 1
    assert "Invoice" in mailer.sent[0]["Subject"]
    assert count(session, EmailLog) == 1


def test_fan_out_over_all_clients_in_batches(session, worker, mailer):
    clients = [f.client(session) for _ in range(5)]
    for c in clients:
        f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    generate_due_invoices.send()
    drain()
    assert count(session, Invoice) == 5
    assert len(mailer.sent) == 5
    # the whole run again (a duplicate trigger) changes nothing
    generate_due_invoices.send(as_of="2026-01-10")
    drain()
    assert count(session, Invoice) == 5 and len(mailer.sent) == 5


def test_the_fan_out_skips_parked_clients_but_a_named_one_is_invoiced(session, worker, mailer):
    from datetime import UTC, datetime

    # Given three clients with a thing due, one of them parked by earlier failing runs
    clients = [f.client(session) for _ in range(3)]
    for c in clients:
        f.service(session, c, next_due_date=date(2026, 1, 12))
    clients[1].parked_at, clients[1].parked_reason = datetime(2026, 1, 9, tzinfo=UTC), "currency_id: missing"
    session.commit()
    # When every client is invoiced (the fan-out, as the daily run does)
    generate_due_invoices.send()
    drain()
    # Then the parked client waits for `unpark`
    assert sorted(session.scalars(select(Invoice.client_id))) == [clients[0].id, clients[2].id]
    session.rollback()
    # And named, it is invoiced
    generate_due_invoices.send(client_id=clients[1].id)
    drain()
    assert count(session, Invoice) == 3


def test_the_fan_out_keeps_send_email_false(session, worker, mailer):
    # Given two clients with a thing due
    for _ in range(2):
        f.service(session, f.client(session), next_due_date=date(2026, 1, 12))
    session.commit()
    # When every client is invoiced without emails
    generate_due_invoices.send(send_email=False)
    drain()
    # Then the batches invoiced them and queued no email
    assert count(session, Invoice) == 2
    assert count(session, OutboxEmail) == 0 and mailer.sent == []


def test_one_broken_client_never_stops_the_fan_out(session, worker):
    good = [f.client(session) for _ in range(3)]
    broken = f.client(session)
    session.flush()
    broken.currency_id = None
    for c in [*good, broken]:
        f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    generate_due_invoices.send()
    drain()
    assert count(session, Invoice) == 3
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.client_id == broken.id and "currency" in failure.reason
    assert dead_letters() == []


@pytest.mark.parametrize("kwargs, field", [
    ({"client_id": 999_999}, "client_id"),
    ({"client_id": "abc"}, "client_id"),
    ({"client_id": 1, "as_of": "2026-13-45"}, "as_of"),
    ({"client_id": 1, "as_of": 20260101}, "as_of"),
    ({"client_id": 1, "send_email": "yes"}, "send_email"),
    ({"client_id": 1, "colour": "blue"}, "arguments"),
])
def test_bad_input_is_dead_lettered_at_once_with_the_field_named(session, worker, kwargs, field):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    message = generate_due_invoices.send(**kwargs)
    drain()
    [dead] = dead_letters()
    assert dead.message_id == message.message_id
    assert dead.options.get("retries", 0) == 0, "validation errors are not retried"
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.field == field and failure.message_id == message.message_id
    assert count(session, Invoice) == 0


def test_a_client_without_currency_is_refused_by_the_single_client_job(session, worker):
    c = f.client(session)
    session.flush()
    c.currency_id = None
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    generate_due_invoices.send(client_id=c.id)
    drain()
    assert len(dead_letters()) == 1
    assert count(session, Invoice) == 0 and count(session, OutboxEmail) == 0


def test_a_crash_before_commit_leaves_nothing_and_the_retry_bills_once(session, worker, mailer, monkeypatch):
    from billingworker.domain.billing import due_invoices

    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    real = due_invoices.queue_emails
    crashes = []

    def crash_once(*args, **kwargs):
        ids = real(*args, **kwargs)  # the invoice and its email row are written, not committed
        if not crashes:
            crashes.append(1)
            raise ConnectionError("worker lost its database connection")
        return ids

    monkeypatch.setattr(due_invoices, "queue_emails", crash_once)
    monkeypatch.setattr("billingworker.actors.base.MIN_BACKOFF_MS", 1)
    monkeypatch.setitem(generate_due_invoices.options, "min_backoff", 10)
    monkeypatch.setitem(generate_due_invoices.options, "max_backoff", 20)
    generate_due_invoices.send(client_id=c.id)
    drain()
    assert crashes == [1]
    assert count(session, Invoice) == 1
    assert [i.number for i in session.execute(select(Invoice)).scalars()] == [1], "the crashed number was reused"
    assert len(mailer.sent) == 1


def test_invoice_selected_items_ignores_separate_invoices_and_refuses_already_invoiced(session, worker):
    c = f.client(session, separate_invoices=True)
    s1 = f.service(session, c, next_due_date=date(2026, 3, 1), domain="a.com")  # outside the window
    s2 = f.service(session, c, next_due_date=date(2026, 3, 1), domain="b.com")
    s3 = f.service(session, c, next_due_date=date(2026, 1, 12), domain="c.com", payment_method="paypal")
    session.commit()
    generate_due_invoices.send(client_id=c.id)
    drain()
    assert count(session, Invoice) == 1  # s3 only
    invoice_selected_items.send(client_id=c.id, items=[
        {"type": "service", "id": s1.id}, {"type": "service", "id": s2.id}, {"type": "service", "id": s3.id},
        {"type": "domain", "id": 424242}])
    drain()
    invoices = list(session.execute(select(Invoice).order_by(Invoice.id)).scalars())
    assert len(invoices) == 2
    assert count(session, InvoiceItem, InvoiceItem.invoice_id == invoices[1].id) == 2, "grouped despite separate"
    refusals = {r.field: r.reason for r in session.execute(select(JobFailure)).scalars()}
    assert "already invoiced" in refusals[f"items[service:{s3.id}]"]
    assert "does not exist" in refusals["items[domain:424242]"]
    session.refresh(s1)
    assert s1.next_invoice_date == date(2026, 4, 1)


def test_invoice_selected_items_rejects_unknown_item_type(session, worker):
    c = f.client(session)
    session.commit()
    invoice_selected_items.send(client_id=c.id, items=[{"type": "spaceship", "id": 1}])
    drain()
    assert len(dead_letters()) == 1
    assert session.execute(select(JobFailure.field)).scalar_one() == "items[0].type"


def test_create_invoice_is_an_empty_draft_once_per_message(session, worker, mailer):
    c = f.client(session)
    session.commit()
    message = create_invoice.send(client_id=c.id)
    drain()
    redeliver(message)
    drain()
    [inv] = session.execute(select(Invoice)).scalars()
    assert (inv.status, inv.number, inv.total) == ("Draft", None, 0)
    assert mailer.sent == []


def test_add_funds_invoice_within_limits_once_and_its_payment_credits_the_balance(session, worker, mailer):
    c = f.client(session)
    session.commit()
    message = create_add_funds_invoice.send(client_id=c.id, amount="25.00")
    drain()
    redeliver(message)
    drain()
    [inv] = session.execute(select(Invoice)).scalars()
    assert (inv.kind, inv.total, inv.credit_applied) == ("add_funds", Decimal("25.00"), 0)
    assert len(mailer.sent) == 1
    apply_payment.send(invoice_id=inv.id, amount="25.00", gateway="stripe", transaction_id="ch_1")
    apply_payment.send(invoice_id=inv.id, amount="25.00", gateway="stripe", transaction_id="ch_1")
    drain()
    session.expire_all()
    assert session.get(Client, c.id).credit_balance == Decimal("25.00")
    assert session.get(Invoice, inv.id).status == "Paid"
    assert len(mailer.sent) == 2  # the invoice and one payment confirmation


@pytest.mark.parametrize("amount, rule", [
    ("5.00", "below the add-funds minimum"),
    ("500.00", "above the add-funds maximum"),
    ("-10", "must not be negative"),
    ("ten", "is not a decimal number"),
    (10.5, "not a JSON number"),
    ("10.001", "more than 2 decimal places"),
])
def test_add_funds_bad_amounts(session, worker, amount, rule):
    c = f.client(session)
    session.commit()
    create_add_funds_invoice.send(client_id=c.id, amount=amount)
    drain()
    assert len(dead_letters()) == 1
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.field == "amount" and rule in failure.reason
    assert count(session, Invoice) == 0


def test_add_funds_respects_the_maximum_balance(session, worker):
    c = f.client(session, credit_balance=Decimal("290.00"))
    session.commit()
    create_add_funds_invoice.send(client_id=c.id, amount="20.00")
    drain()
    assert "maximum balance" in session.execute(select(JobFailure.reason)).scalar_one()


def test_apply_payment_marks_paid_and_advances_the_due_date_once(session, worker, mailer):
    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2026, 1, 15), amount=Decimal("10.00"))
    session.commit()
    generate_due_invoices.send(client_id=c.id)
    drain()
    inv = session.execute(select(Invoice)).scalar_one()
    for _ in range(3):
        apply_payment.send(invoice_id=inv.id, amount="10.00", gateway="paypal", transaction_id="PAY-1", fees="0.59")
    drain()
    session.expire_all()
    assert session.get(Invoice, inv.id).status == "Paid"
    assert session.get(Service, s.id).next_due_date == date(2026, 2, 15)
    assert len(mailer.sent) == 2


def test_partial_payments_then_overpayment_becomes_credit(session, worker):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 15), amount=Decimal("10.00"))
    session.commit()
    generate_due_invoices.send(client_id=c.id)
    drain()
    inv = session.execute(select(Invoice)).scalar_one()
    apply_payment.send(invoice_id=inv.id, amount="4.00", gateway="bank", transaction_id="t1")
    drain()
    session.expire_all()
    assert (session.get(Invoice, inv.id).status, session.get(Invoice, inv.id).balance_due) == ("Unpaid", Decimal(6))
    apply_payment.send(invoice_id=inv.id, amount="10.00", gateway="bank", transaction_id="t2")
    drain()
    session.expire_all()
    assert session.get(Invoice, inv.id).status == "Paid"
    assert session.get(Client, c.id).credit_balance == Decimal("4.00")


# --- sums beyond what the books hold (NUMERIC(18,4)): each amount fits, their sum does not ---------
# (they failed in the database and were retried 10 times with no failure row; on SQLite they
# were stored)

HUGE = Decimal("60000000000000.00")


def test_an_overpayment_beyond_what_the_credit_holds_is_refused_at_once(session, worker):
    c = f.client(session, credit_balance=HUGE)
    inv = f.invoice(session, c, due=date(2026, 1, 20))
    session.commit()
    apply_payment.send(invoice_id=inv.id, amount=str(HUGE), gateway="bank", transaction_id="t-huge")
    drain()
    [dead] = dead_letters()
    assert dead.options.get("retries", 0) == 0
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.field == "amount" and "beyond the largest amount the books hold" in failure.reason
    session.expire_all()
    assert session.get(Client, c.id).credit_balance == HUGE and count(session, Transaction) == 0


def test_selected_items_whose_invoice_total_no_column_holds_are_refused_at_once(session, worker):
    c = f.client(session)
    things = [f.service(session, c, next_due_date=date(2026, 1, 15), amount=HUGE, domain=f"s{n}.com")
              for n in range(2)]
    session.commit()
    invoice_selected_items.send(client_id=c.id, items=[{"type": "service", "id": s.id} for s in things])
    drain()
    assert len(dead_letters()) == 1
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.field == "items" and "an invoice's total" in failure.reason
    assert count(session, Invoice) == 0


def test_in_a_batch_a_client_whose_invoice_no_column_holds_fails_alone(session, worker):
    rich, plain = f.client(session), f.client(session)
    for n in range(2):
        f.service(session, rich, next_due_date=date(2026, 1, 15), amount=HUGE, domain=f"r{n}.com")
    f.service(session, plain, next_due_date=date(2026, 1, 15))
    session.commit()
    generate_due_invoices.send()
    drain()
    assert dead_letters() == []
    assert [i.client_id for i in session.scalars(select(Invoice))] == [plain.id]
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.client_id == rich.id and "an invoice's total" in failure.reason


@pytest.mark.parametrize("kwargs, field", [
    ({"invoice_id": 999, "amount": "1.00", "gateway": "x", "transaction_id": "t"}, "invoice_id"),
    ({"invoice_id": 1, "amount": "-1.00", "gateway": "x", "transaction_id": "t"}, "amount"),
    ({"invoice_id": 1, "amount": "1.00", "gateway": "", "transaction_id": "t"}, "gateway"),
    ({"invoice_id": 1, "amount": "1.00", "gateway": "x", "transaction_id": "t", "fees": "-1"}, "fees"),
])
def test_apply_payment_bad_input(session, worker, kwargs, field):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 15))
    session.commit()
    generate_due_invoices.send(client_id=c.id)
    drain()
    apply_payment.send(**kwargs)
    drain()
    assert len(dead_letters()) == 1
    assert session.execute(select(JobFailure.field)).scalar_one() == field


def test_concurrent_threads_same_client_bill_once(session, worker, mailer):
    c = f.client(session)
    for n in range(3):
        f.service(session, c, next_due_date=date(2026, 1, 12 + n), domain=f"s{n}.com")
    session.commit()
    barrier = threading.Barrier(4)

    def send():
        barrier.wait()
        generate_due_invoices.send(client_id=c.id)

    threads = [threading.Thread(target=send) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    drain()
    assert count(session, Invoice) == 3
    assert len(mailer.sent) == 3
