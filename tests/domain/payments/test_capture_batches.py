"""Card capture at scale: gateway calls in parallel, answers recorded a group per transaction,
pending rows inserted set-wise; and ``apply_payments``, the batch form of ``apply_payment``."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from billingworker.adapters.gateway import TestGateway
from billingworker.domain.errors import Conflict
from billingworker.domain.models import (
    CaptureStatus,
    Client,
    CreditHistory,
    Invoice,
    OutboxEmail,
    PaymentCapture,
    Service,
    Transaction,
)
from billingworker.domain.payments import captures as captures_module
from billingworker.domain.payments.payments import PaymentRequest, apply_payments
from tests.factories import CAPTURE_DUE as DUE
from tests.factories import capture, captures, set_card
from tests.factories import capture_at as at
from tests.factories import capture_setup as setup


class CountingGateway(TestGateway):
    """Counts how many captures are in flight at once."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0
        self._count_lock = threading.Lock()

    def capture(self, request):
        with self._count_lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            time.sleep(0.05)
            return super().capture(request)
        finally:
            with self._count_lock:
                self.in_flight -= 1


def test_many_captures_run_in_parallel_and_are_recorded_in_groups(engine, session, monkeypatch):
    # Given twelve clients due a capture, one with a declining card, and groups of five
    monkeypatch.setattr(captures_module, "RECORD_GROUP_SIZE", 5)
    clients = [setup(session)[0] for _ in range(12)]
    set_card(session, clients[3], token="tok_4000000000000002", last_four="0002")
    gateway = CountingGateway()

    # When the day's capture runs, and runs again
    result = capture(session, gateway, clients, DUE)
    again = capture(session, gateway, clients, DUE)

    # Then the gateway was asked several at a time, each invoice charged once, and every
    # success recorded through the payment path
    assert gateway.most_in_flight > 1
    assert result.captures == 11 and [x.client_id for x in result.failures] == [clients[3].id]
    assert again.captures == 0 and len(gateway.charges) == 11
    rows = captures(session)
    assert sorted(r.status for r in rows) == ["declined"] + ["succeeded"] * 11
    assert session.scalar(select(func.count()).select_from(Transaction)) == 11
    assert session.scalar(select(func.count()).where(Invoice.status == "Paid")) == 11
    assert session.scalar(select(func.count()).where(OutboxEmail.template == "payment_confirmation")) == 11
    # and paying moved each service's next due date by one cycle
    assert session.scalar(select(func.count()).where(Service.next_due_date == DUE + timedelta(days=31))) == 11


def test_a_row_another_application_wrote_meanwhile_is_not_inserted_twice(engine, session):
    # Given two invoices, one of which another application already attempted today
    a, _, a_inv = setup(session)
    b, _, b_inv = setup(session)
    session.add(PaymentCapture(invoice_id=a_inv, client_id=a.id, attempt_on=DUE, gateway="testgateway",
                               amount=Decimal("10.00"), status=CaptureStatus.DECLINED))
    session.commit()
    attempts = [captures_module._Attempt(0, c.id, inv, "x", Decimal("10.00"), "USD", "testgateway", "tok", "4242")
                for c, inv in ((a, a_inv), (b, b_inv))]

    # When the pending rows are inserted
    ids = captures_module._insert_pending(session, [(attempt, None) for attempt in attempts], DUE)
    session.commit()

    # Then only b got one: a's clashed with the unique index and was left alone
    assert list(ids) == [b_inv]
    assert [(r.invoice_id, r.status) for r in captures(session)] == [(a_inv, "declined"), (b_inv, "pending")]


def test_apply_payments_in_one_batch(session):
    # Given three unpaid invoices of 10.00
    invoices = [setup(session, card=False)[2] for _ in range(3)]
    first, second, third = invoices
    session.get(Invoice, third).status = "Cancelled"
    session.commit()

    # When a batch pays the first in two parts, repeats one of them, and pays the cancelled one
    results = apply_payments(session, [
        PaymentRequest(first, Decimal("4.00"), "testgateway", "t-1"),
        PaymentRequest(first, Decimal("6.00"), "testgateway", "t-2"),
        PaymentRequest(first, Decimal("6.00"), "testgateway", "t-2"),
        PaymentRequest(second, Decimal("12.50"), "testgateway", "t-3"),
        PaymentRequest(third, Decimal("10.00"), "testgateway", "t-4"),
    ], as_of=DUE, now=at(DUE))
    session.commit()

    # Then the parts settle the first, the repeat is a duplicate, overpayment and the cancelled
    # invoice's payment become credit, and each recorded payment queues one confirmation
    assert [(r.outcome, r.invoice_status, r.balance_due, r.credited) for r in results] == [
        ("recorded", "Unpaid", Decimal("6.00"), Decimal("0")),
        ("recorded", "Paid", Decimal("0"), Decimal("0")),
        ("duplicate", "Paid", Decimal("0"), Decimal("0")),
        ("recorded", "Paid", Decimal("0"), Decimal("2.50")),
        ("recorded", "Cancelled", Decimal("10.00"), Decimal("10.00")),
    ]
    assert results[2].transaction_row_id == results[1].transaction_row_id
    assert session.scalar(select(func.count()).select_from(Transaction)) == 4
    assert session.scalar(select(func.count()).select_from(OutboxEmail).where(
        OutboxEmail.template == "payment_confirmation")) == 4
    assert sorted(session.scalars(select(CreditHistory.amount))) == [Decimal("2.50"), Decimal("10.00")]
    owner_of_second = session.get(Invoice, second).client_id
    assert session.get(Client, owner_of_second).credit_balance == Decimal("2.50")


def test_apply_payments_refuses_a_transaction_of_another_invoice_and_writes_nothing(session):
    a_inv = setup(session, card=False)[2]
    b_inv = setup(session, card=False)[2]
    apply_payments(session, [PaymentRequest(a_inv, Decimal("1.00"), "testgateway", "t-1")], as_of=DUE, now=at(DUE))
    session.commit()
    with pytest.raises(Conflict, match="already recorded for invoice"):
        apply_payments(session, [PaymentRequest(b_inv, Decimal("10.00"), "testgateway", "t-9"),
                                 PaymentRequest(b_inv, Decimal("1.00"), "testgateway", "t-1")],
                       as_of=DUE, now=at(DUE))
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Transaction)) == 1
    assert session.get(Invoice, b_inv).status == "Unpaid"
