"""Auto CC capture (SPEC §8, §2): on SQLite and PostgreSQL; races on PostgreSQL.

Each test drives ``capture_due_payments_for_clients`` day by day with its own ``TestGateway`` and counts the
real charges it made.
"""

from __future__ import annotations

import logging
import threading
import time as time_module
from datetime import date, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from billingworker.adapters.gateway import TEST_GATEWAY, TestGateway, gateway_for
from billingworker.db import session_factory
from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.models import (
    Client,
    CreditHistory,
    Invoice,
    OutboxEmail,
    PaymentCapture,
    PayMethod,
    Service,
    Transaction,
)
from billingworker.domain.payments.captures import attempt_due, capture_due_payments_for_clients
from billingworker.domain.ports import CaptureRequest, CaptureResult
from billingworker.domain.runs.daily_run import PARK_AFTER_FAILURES, note_outcomes
from billingworker.domain.settings import BillingSettings, save_settings
from tests import factories as f
from tests.factories import CAPTURE_DUE as DUE
from tests.factories import capture, captures, set_card
from tests.factories import capture_at as at
from tests.factories import capture_setup as setup

CARD_NUMBER = "4242424242424242"


def invoice(session, invoice_id: int) -> Invoice:
    session.rollback()
    session.expire_all()
    return session.get(Invoice, invoice_id)


def attempt_days(session, invoice_id: int) -> list[date]:
    return [c.attempt_on for c in captures(session, invoice_id)]


def count(session, model) -> int:
    session.rollback()
    return session.scalar(select(func.count()).select_from(model))


# -- the schedule, as a plain function -------------------------------------------------------------

def test_the_schedule_rules():
    daily, weekly, once = BillingSettings(), BillingSettings(card_capture_retry_weeks=2), BillingSettings(
        card_capture_attempt_once=True)
    early = BillingSettings(card_capture_days_before_due=3)
    assert not attempt_due(DUE, DUE - timedelta(days=1), [], daily)
    assert attempt_due(DUE, DUE, [], daily) and attempt_due(DUE, DUE + timedelta(days=40), [], weekly)
    assert attempt_due(DUE, DUE - timedelta(days=3), [], early)
    assert not attempt_due(DUE, DUE - timedelta(days=4), [], early)
    assert attempt_due(DUE, DUE + timedelta(days=1), [DUE], daily)
    assert not attempt_due(DUE, DUE, [DUE], daily), "never twice a day"
    assert not attempt_due(DUE, DUE + timedelta(days=5), [DUE], once)
    assert [n for n in range(1, 30) if attempt_due(DUE, DUE + timedelta(days=n), [DUE], weekly)] == [7, 14]


# -- what a capture does ---------------------------------------------------------------------------

def test_a_successful_capture_pays_the_invoice_through_the_payment_path(engine, session):
    # Given an Unpaid invoice due today and a good default card
    c, svc, inv_id = setup(session)
    gw = TestGateway()
    # When the day's capture runs
    result = capture(session, gw, c, DUE)
    # Then the card is charged once, the invoice is Paid and the service renews a cycle later
    assert (result.captures, result.amount, result.failures) == (1, Decimal("10.00"), [])
    assert result.preview == [{"client_id": c.id, "invoice_id": inv_id, "amount": "10.00", "outcome": "succeeded"}]
    assert result.succeeded_clients == {c.id} and result.clients == 1
    [charge] = gw.charges
    assert (charge.amount, charge.currency, charge.last_four) == (Decimal("10.00"), "USD", "4242")
    inv = invoice(session, inv_id)
    assert (inv.status, inv.balance_due, inv.date_paid) == ("Paid", 0, DUE)
    txn = session.execute(select(Transaction)).scalar_one()
    assert (txn.gateway, txn.transaction_id, txn.amount_in, txn.invoice_id) == (
        "testgateway", f"test_charge_{charge.idempotency_key}", Decimal("10.00"), inv_id)
    assert session.get(Service, svc.id).next_due_date == date(2026, 2, 15)
    [cap] = captures(session)
    assert (cap.status, cap.gateway_reference, cap.amount, cap.attempt_on, cap.gateway) == (
        "succeeded", f"test_charge_{charge.idempotency_key}", Decimal("10.00"), DUE, "testgateway")
    assert charge.idempotency_key == f"capture-{cap.id}-invoice-{cap.invoice_id}"
    # And the payment confirmation is queued for the caller to deliver
    [email_id] = result.email_ids
    assert session.get(OutboxEmail, email_id).template == "payment_confirmation"


def test_running_twice_the_same_day_charges_once(engine, session):
    c, _, inv_id = setup(session)
    gw = TestGateway()
    first = capture(session, gw, c, DUE)
    second = capture(session, gw, c, DUE)
    assert (first.captures, second.captures) == (1, 0)
    assert len(gw.charges) == 1 and gw.calls == 1
    assert count(session, Transaction) == 1 and len(captures(session)) == 1
    assert count(session, OutboxEmail) == 2  # invoice created + one payment confirmation


def test_a_decline_is_recorded_and_retried_the_next_day(engine, session):
    # Given a card that is declined, and the default schedule (retry daily)
    c, _, inv_id = setup(session)
    set_card(session, c, token="tok_4000000000000002", last_four="0002")
    gw = TestGateway()
    # When the due date's run tries it
    result = capture(session, gw, c, DUE)
    # Then the decline is recorded with the gateway's message and reported as the client's failure
    [cap] = captures(session)
    assert (cap.status, cap.error, cap.gateway_reference) == ("declined", "card declined", "test_decline_1")
    [failure] = result.failures
    assert (failure.client_id, failure.value) == (c.id, inv_id) and "card declined" in failure.reason
    assert "0002" in failure.reason and result.succeeded_clients == set()
    assert result.preview[0]["outcome"] == "declined" and result.captures == 0
    assert invoice(session, inv_id).status == "Unpaid" and count(session, Transaction) == 0
    # And a second run that day does not try again, the next day's does
    assert capture(session, gw, c, DUE).failures == [] and gw.calls == 1
    capture(session, gw, c, DUE + timedelta(days=1))
    assert attempt_days(session, inv_id) == [DUE, DUE + timedelta(days=1)] and gw.calls == 2
    # And once the client fixes the card, the next day's retry pays the invoice
    set_card(session, c, token="tok_4242424242424242", last_four="4242")
    assert capture(session, gw, c, DUE + timedelta(days=2)).captures == 1
    assert invoice(session, inv_id).status == "Paid"
    assert [x.status for x in captures(session)] == ["declined", "declined", "succeeded"]
    assert capture(session, gw, c, DUE + timedelta(days=3)).preview == [] and len(gw.charges) == 1


def test_retry_weeks_retries_only_on_the_weekly_days_for_n_weeks(engine, session):
    save_settings(session, card_capture_retry_weeks=2)
    c, _, inv_id = setup(session)
    set_card(session, c, token="tok_4000000000000002", last_four="0002")
    gw = TestGateway()
    for n in range(0, 30):
        capture(session, gw, c, DUE + timedelta(days=n))
    assert attempt_days(session, inv_id) == [DUE, DUE + timedelta(days=7), DUE + timedelta(days=14)]
    assert gw.charges == [] and len(gw.declines) == 3


def test_attempt_only_once_never_retries(engine, session):
    save_settings(session, card_capture_attempt_once=True)
    c, _, inv_id = setup(session)
    set_card(session, c, token="tok_4000000000000002", last_four="0002")
    gw = TestGateway()
    for n in range(0, 20):
        capture(session, gw, c, DUE + timedelta(days=n))
    assert attempt_days(session, inv_id) == [DUE] and gw.calls == 1


def test_days_before_due_sets_the_first_attempt(engine, session):
    save_settings(session, card_capture_days_before_due=3)
    c, _, inv_id = setup(session)
    gw = TestGateway()
    assert capture(session, gw, c, DUE - timedelta(days=4)).preview == []
    assert gw.calls == 0 and captures(session) == []
    assert capture(session, gw, c, DUE - timedelta(days=3)).captures == 1
    assert attempt_days(session, inv_id) == [DUE - timedelta(days=3)]
    assert invoice(session, inv_id).status == "Paid"


def test_no_attempt_before_the_due_date_by_default(engine, session):
    c, _, _ = setup(session)
    gw = TestGateway()
    assert capture(session, gw, c, DUE - timedelta(days=1)).preview == [] and gw.calls == 0


@pytest.mark.parametrize("case", ["flag off", "no card", "not default", "bank account", "no token", "paid",
                                  "closed", "zero balance"])
def test_invoices_that_must_not_be_charged_get_no_attempt(engine, session, case):
    # Given one client whose invoice must not be charged, for the reason ``case``
    c, _, inv_id = setup(session, auto_cc_processing=case != "flag off", card=case != "no card")
    pm = session.execute(select(PayMethod).where(PayMethod.client_id == c.id)).scalar_one_or_none()
    inv = session.get(Invoice, inv_id)
    if case == "not default":
        pm.is_default = False
    elif case == "bank account":
        pm.type = "RemoteBankAccount"
    elif case == "no token":
        pm.type, pm.gateway_token, pm.encrypted_data = "CreditCard", "", b"ciphertext"
    elif case == "paid":
        inv.status = "Paid"
    elif case == "closed":
        session.get(Client, c.id).status = "Closed"
    elif case == "zero balance":
        inv.balance_due = Decimal("0")
    session.commit()
    gw = TestGateway()
    # When the capture runs on the due date and for days after
    for n in range(3):
        result = capture(session, gw, c, DUE + timedelta(days=n))
        assert result.preview == [] and result.failures == []
    # Then no gateway call and no attempt was recorded
    assert gw.calls == 0 and captures(session) == []


def test_an_unknown_gateway_is_a_failure_without_an_attempt(engine, session):
    c, _, _ = setup(session)
    pm = session.execute(select(PayMethod)).scalar_one()
    pm.gateway_name = "nosuchpay"
    session.commit()
    gw = TestGateway()
    result = capture(session, gw, c, DUE)
    [failure] = result.failures
    assert (failure.field, failure.value) == ("pay_method.gateway_name", "nosuchpay")
    assert "is not a registered payment gateway" in failure.message and not failure.parks
    assert gw.calls == 0 and captures(session) == []


def registry_capture(session, client, as_of: date):
    """The capture as the worker runs it: through the gateway registry (``gateway_for``)."""
    session.rollback()
    return capture_due_payments_for_clients(session_factory(session.get_bind()), [client.id], as_of, gateway_for,
                                            now=at(as_of))


def test_without_payment_gateways_a_testgateway_card_is_never_charged(engine, session, monkeypatch):
    # Given a production worker (PAYMENT_GATEWAYS unset) and a client whose default card names
    # the test gateway (a pay method an admin or an import left behind)
    monkeypatch.delenv("PAYMENT_GATEWAYS", raising=False)
    c, _, inv_id = setup(session)
    # When the capture runs on the due date, day after day
    for n in range(PARK_AFTER_FAILURES + 1):
        result = registry_capture(session, c, DUE + timedelta(days=n))
        session.rollback()
        note_outcomes(session, result, now=at(DUE + timedelta(days=n)))
        session.commit()
        # Then nothing is charged, nothing is recorded as an attempt and nothing is paid
        assert (result.captures, result.amount, result.email_ids) == (0, Decimal("0"), [])
        # And the failure names the gateway and the setting, and is not the client's fault
        [failure] = result.failures
        assert (failure.client_id, failure.field, failure.value, failure.parks) == (
            c.id, "pay_method.gateway_name", "testgateway", False)
        assert "'testgateway' is the test gateway" in failure.message and "PAYMENT_GATEWAYS=test" in failure.message
        assert "nothing charged" in failure.message
    assert TEST_GATEWAY.calls == 0 and TEST_GATEWAY.charges == []
    assert captures(session) == [] and count(session, Transaction) == 0
    inv = invoice(session, inv_id)
    assert (inv.status, inv.balance_due) == ("Unpaid", Decimal("10.00"))
    # And however many days it fails, the client is never parked for a configuration problem
    client = session.get(Client, c.id)
    assert (client.failure_count, client.parked_at) == (0, None)


def test_with_payment_gateways_test_the_registry_charges_the_test_gateway(engine, session, monkeypatch):
    monkeypatch.setenv("PAYMENT_GATEWAYS", "test")
    c, _, inv_id = setup(session)
    result = registry_capture(session, c, DUE)
    assert (result.captures, result.failures) == (1, [])
    assert len(TEST_GATEWAY.charges) == 1 and invoice(session, inv_id).status == "Paid"


def test_a_pending_capture_at_a_gateway_switched_off_stays_pending_and_unasked(engine, session, monkeypatch):
    # Given a pending attempt at the test gateway (left by a run) and then the gateway switched off
    c, _, inv_id = setup(session)
    pending_row(session, c, inv_id, DUE)
    monkeypatch.delenv("PAYMENT_GATEWAYS", raising=False)
    # When the next run recovers it
    result = registry_capture(session, c, DUE + timedelta(days=1))
    # Then nobody is asked, the row stays pending (not failed, not paid) and the client is not parked
    assert TEST_GATEWAY.calls == 0 and result.captures == 0
    assert [x.status for x in captures(session)] == ["pending"]
    assert invoice(session, inv_id).status == "Unpaid"
    [failure] = result.failures
    assert not failure.parks and "stays pending" in failure.reason and "'testgateway'" in failure.reason


def test_one_clients_decline_does_not_stop_the_others(engine, session):
    a, _, a_inv = setup(session)
    b, _, b_inv = setup(session)
    set_card(session, a, token="tok_4000000000000002", last_four="0002")
    gw = TestGateway()
    result = capture(session, gw, [a, b], DUE)
    assert result.captures == 1 and result.clients == 2
    assert result.succeeded_clients == {b.id} and [x.client_id for x in result.failures] == [a.id]
    assert (invoice(session, a_inv).status, invoice(session, b_inv).status) == ("Unpaid", "Paid")


def test_every_unpaid_invoice_of_a_client_is_captured_separately(engine, session):
    c, _, first = setup(session)
    f.service(session, c, next_due_date=DUE + timedelta(days=2), amount=Decimal("4.00"), domain="b.com")
    session.commit()
    [second] = generate_for_clients(session, [c.id], DUE).invoice_ids
    session.commit()
    gw = TestGateway()
    result = capture(session, gw, c, DUE + timedelta(days=2))
    assert result.captures == 2 and result.amount == Decimal("14.00")
    assert {invoice(session, i).status for i in (first, second)} == {"Paid"}
    assert sorted(ch.amount for ch in gw.charges) == [Decimal("4.00"), Decimal("10.00")]


# -- gateway failures and crashes ------------------------------------------------------------------

def test_a_transient_gateway_error_is_recorded_and_retried(engine, session):
    c, _, inv_id = setup(session)
    set_card(session, c, token="tok_4000000000000119", last_four="0119")
    gw = TestGateway()
    result = capture(session, gw, c, DUE)
    [cap] = captures(session)
    assert cap.status == "error" and "unavailable" in cap.error
    assert result.preview[0]["outcome"] == "error" and len(result.failures) == 1
    assert invoice(session, inv_id).status == "Unpaid"
    # The gateway is back the next day: the retry (a new attempt, a new key) pays the invoice
    set_card(session, c, token="tok_4242424242424242", last_four="4242")
    assert capture(session, gw, c, DUE + timedelta(days=1)).captures == 1
    assert [x.status for x in captures(session)] == ["error", "succeeded"]
    assert invoice(session, inv_id).status == "Paid" and len(gw.charges) == 1


def pending_row(session, client, invoice_id: int, day: date) -> PaymentCapture:
    """What a run that crashed after recording its attempt leaves behind."""
    pm = session.execute(select(PayMethod).where(PayMethod.client_id == client.id)).scalar_one()
    row = PaymentCapture(invoice_id=invoice_id, client_id=client.id, pay_method_id=pm.id, attempt_on=day,
                         gateway="testgateway", amount=Decimal("10.00"), status="pending")
    session.add(row)
    session.commit()
    return row


def replay(gw: TestGateway, row: PaymentCapture) -> CaptureResult:
    key = f"capture-{row.id}-invoice-{row.invoice_id}"
    return gw.capture(CaptureRequest(key, row.amount, "USD", "tok_4242424242424242", "4242", "x"))


def test_a_crash_after_the_charge_is_resolved_without_a_second_charge(engine, session):
    # Given yesterday's run recorded its attempt, the gateway charged, and the worker died
    c, svc, inv_id = setup(session)
    row = pending_row(session, c, inv_id, DUE)
    gw = TestGateway()
    replay(gw, row)
    assert len(gw.charges) == 1
    # When today's run happens
    result = capture(session, gw, c, DUE + timedelta(days=1))
    # Then it asks again with the same key, records the first charge and charges nothing more
    assert len(gw.charges) == 1 and gw.calls == 2
    assert result.captures == 1 and result.preview[0]["outcome"] == "succeeded"
    [cap] = captures(session)
    assert (cap.id, cap.status, cap.attempt_on) == (row.id, "succeeded", DUE)
    assert cap.gateway_reference == f"test_charge_{gw.charges[0].idempotency_key}"
    inv = invoice(session, inv_id)
    assert inv.status == "Paid"
    assert session.get(Service, svc.id).next_due_date == date(2026, 2, 15)
    assert count(session, Transaction) == 1
    assert capture(session, gw, c, DUE + timedelta(days=2)).preview == [] and len(gw.charges) == 1


def test_a_crash_before_the_gateway_was_called_charges_once_under_the_old_key(engine, session):
    c, _, inv_id = setup(session)
    row = pending_row(session, c, inv_id, DUE)
    gw = TestGateway()
    result = capture(session, gw, c, DUE + timedelta(days=1))
    [charge] = gw.charges
    assert charge.idempotency_key == f"capture-{row.id}-invoice-{row.invoice_id}" and result.captures == 1
    assert [x.id for x in captures(session)] == [row.id], "no second attempt was created"
    assert invoice(session, inv_id).status == "Paid"


def test_a_pending_attempt_the_gateway_cannot_answer_stays_pending_and_blocks_new_ones(engine, session):
    c, _, inv_id = setup(session)
    set_card(session, c, token="tok_4000000000000119", last_four="0119")
    row = pending_row(session, c, inv_id, DUE)
    gw = TestGateway()
    result = capture(session, gw, c, DUE + timedelta(days=1))
    assert [(x.id, x.status) for x in captures(session)] == [(row.id, "pending")]
    assert result.preview[0]["outcome"] == "pending" and "stays pending" in result.failures[0].reason
    assert gw.charges == []


class Timeout:
    """A gateway whose answer is lost on the way back: it charged, we never heard."""

    name = "testgateway"

    def __init__(self, inner: TestGateway) -> None:
        self.inner = inner

    def capture(self, request: CaptureRequest) -> CaptureResult:
        self.inner.capture(request)
        raise TimeoutError("read timed out")


def test_an_unanswered_charge_stays_pending_and_the_next_run_records_it_once(engine, session):
    c, _, inv_id = setup(session)
    gw = TestGateway()
    lost = Timeout(gw)
    result = capture(session, lambda name: lost, c, DUE)
    [cap] = captures(session)
    assert cap.status == "pending" and len(gw.charges) == 1 and result.captures == 0
    assert invoice(session, inv_id).status == "Unpaid"
    capture(session, gw, c, DUE + timedelta(days=1))
    assert [(x.id, x.status) for x in captures(session)] == [(cap.id, "succeeded")]
    assert len(gw.charges) == 1 and invoice(session, inv_id).status == "Paid"


def test_a_charge_on_an_invoice_paid_meanwhile_becomes_credit(engine, session):
    # A pending attempt from a crash, then the client paid by bank transfer: the money the
    # gateway took is recorded, never lost, and kept as credit.
    c, _, inv_id = setup(session)
    row = pending_row(session, c, inv_id, DUE)
    gw = TestGateway()
    replay(gw, row)
    from billingworker.domain.payments.payments import apply_payment

    apply_payment(session, inv_id, Decimal("10.00"), gateway="bank", transaction_id="wire-1", as_of=DUE, now=at(DUE))
    session.commit()
    capture(session, gw, c, DUE + timedelta(days=1))
    assert len(gw.charges) == 1 and count(session, Transaction) == 2
    session.expire_all()
    assert session.get(Client, c.id).credit_balance == Decimal("10.00")
    assert session.execute(select(CreditHistory.amount)).scalar_one() == Decimal("10.00")


def test_an_answer_that_cannot_be_recorded_stays_pending_and_the_others_go_on(engine, session, monkeypatch):
    a, _, a_inv = setup(session)
    b, _, b_inv = setup(session)
    from billingworker.domain.errors import ValidationError
    from billingworker.domain.payments import captures as module

    real_many = module.apply_payments

    def broken_many(session, requests, **kw):
        if any(r.invoice_id == a_inv for r in requests):
            raise ValidationError("invoice_id", a_inv, "is broken in this test")
        return real_many(session, requests, **kw)

    # (the answers are recorded together first, then one by one when that fails)
    monkeypatch.setattr(module, "apply_payments", broken_many)
    gw = TestGateway()
    result = capture(session, gw, [a, b], DUE)
    assert result.captures == 1 and [x.client_id for x in result.failures] == [a.id]
    assert [(x.invoice_id, x.status) for x in captures(session)] == [(a_inv, "pending"), (b_inv, "succeeded")]
    # Fixed the next day: a's charge is recorded under its first key, never charged again
    monkeypatch.setattr(module, "apply_payments", real_many)
    assert capture(session, gw, [a, b], DUE + timedelta(days=1)).captures == 1
    assert len(gw.charges) == 2 and invoice(session, a_inv).status == "Paid"


# -- dry run ---------------------------------------------------------------------------------------

def test_a_dry_run_previews_and_writes_nothing(engine, session):
    c, _, inv_id = setup(session)
    other, _, other_inv = setup(session)
    pending_row(session, other, other_inv, DUE - timedelta(days=1))
    gw = TestGateway()
    result = capture(session, gw, [c, other], DUE, dry_run=True)
    assert result.preview == [
        {"client_id": other.id, "invoice_id": other_inv, "amount": "10.00",
         "outcome": "pending: would ask the gateway again"},
        {"client_id": c.id, "invoice_id": inv_id, "amount": "10.00", "outcome": "would capture"},
    ]
    assert (result.captures, result.amount, result.email_ids) == (1, Decimal("10.00"), [])
    assert gw.calls == 0
    assert [x.status for x in captures(session)] == ["pending"] and count(session, Transaction) == 0
    assert invoice(session, inv_id).status == "Unpaid"


def test_a_dry_run_never_waits_for_the_clients_locks(pg_engine, pg_session):
    # The daily run's preview calls it while its own session holds the clients' row locks.
    c, _, inv_id = setup(pg_session)
    from billingworker.domain.billing.invoice_store import lock_clients

    holder = session_factory(pg_engine)()
    try:
        lock_clients(holder, [c.id])
        result = capture_due_payments_for_clients(session_factory(pg_engine), [c.id], DUE,
                                                  {"testgateway": TestGateway()}.get,
                                                  now=at(DUE), dry_run=True)
    finally:
        holder.rollback()
        holder.close()
    assert [line["outcome"] for line in result.preview] == ["would capture"]


# -- card numbers ----------------------------------------------------------------------------------

def test_card_numbers_never_reach_a_log_or_a_stored_field(engine, session, caplog):
    caplog.set_level(logging.DEBUG)
    good, _, _ = setup(session)
    bad, _, _ = setup(session)
    down, _, _ = setup(session)
    set_card(session, bad, token="tok_4000000000000002", last_four="0002")
    set_card(session, down, token="tok_4000000000000119", last_four="0119")

    class Chatty(TestGateway):
        """A gateway that echoes the card number in its messages."""

        def capture(self, request):
            answer = super().capture(request)
            return CaptureResult(answer.status, answer.transaction_id,
                                 f"{answer.message} for card 4000 0000 0000 0002")

    gw = Chatty()
    result = capture(session, gw, [good, bad, down], DUE)
    assert result.captures == 1 and len(result.failures) == 2
    numbers = [CARD_NUMBER, "4000000000000002", "4000000000000119", "4000 0000 0000 0002"]
    texts = [caplog.text, repr(result)]
    session.rollback()
    for model in (PaymentCapture, Transaction, OutboxEmail, CreditHistory, Invoice):
        for row in session.execute(select(model)).scalars():
            texts.append(repr({k: v for k, v in vars(row).items() if not k.startswith("_")}))
    assert "card ending 4242" in caplog.text
    for text in texts:
        for number in numbers:
            assert number not in text


# -- two workers at once (PostgreSQL) --------------------------------------------------------------

class Slow(TestGateway):
    """A gateway that takes its time, so that a second worker finds the first one's pending row."""

    def capture(self, request):
        time_module.sleep(0.3)
        return super().capture(request)


@pytest.mark.parametrize("gateway", [TestGateway, Slow])
def test_two_workers_capturing_for_the_same_client_at_once_charge_once(pg_engine, pg_session, gateway):
    s = pg_session
    c, svc, inv_id = setup(s)
    gw = gateway()
    barrier = threading.Barrier(2)
    results, errors = [], []

    def run(delay: float) -> None:
        factory = session_factory(pg_engine)  # each worker has its own sessions
        try:
            barrier.wait()
            time_module.sleep(delay)
            results.append(capture_due_payments_for_clients(factory, [c.id], DUE, lambda name: gw, now=at(DUE)))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(d,)) for d in (0, 0.1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert len(gw.charges) == 1
    if gateway is Slow:
        assert gw.calls == 2, "the second worker found the first one's attempt pending and asked again"
    assert sum(r.captures for r in results) == 1
    assert sum(len(r.email_ids) for r in results) == 1
    assert [(x.status, x.attempt_on) for x in captures(s)] == [("succeeded", DUE)]
    assert count(s, Transaction) == 1
    s.expire_all()
    assert s.get(Invoice, inv_id).status == "Paid"
    assert s.get(Service, svc.id).next_due_date == date(2026, 2, 15)
    assert s.scalar(select(func.count()).select_from(OutboxEmail).where(
        OutboxEmail.template == "payment_confirmation")) == 1
