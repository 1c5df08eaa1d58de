"""Two workers at the same moment, on PostgreSQL and MariaDB: two sessions, two threads, real row locks.

Each test starts both sides behind a barrier so that they really overlap; the database (row
locks, primary keys, unique indexes) must make the pair have the effect of one.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import partial

from sqlalchemy import delete, func, select

from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.billing.invoice_store import allocate_invoice_numbers
from billingworker.domain.billing.manual_invoices import create_add_funds_invoice
from billingworker.domain.models import (
    BilledPeriod,
    Client,
    CreditHistory,
    Invoice,
    InvoiceSequence,
    OutboxEmail,
    Service,
    Transaction,
)
from billingworker.domain.payments.payments import apply_credit_to_invoice, apply_payment
from billingworker.domain.receipts import run_once
from tests import factories as f
from tests.factories import race

TODAY = date(2026, 1, 10)


def scalar(session, stmt):
    session.rollback()
    return session.scalar(stmt)


def test_two_workers_generating_for_the_same_client_bill_once(server_engine, server_session):
    s = server_session
    c = f.client(s)
    for n in range(5):
        f.service(s, c, next_due_date=date(2026, 1, 12 + n), domain=f"s{n}.com")
    s.commit()
    gen = lambda session: generate_for_clients(session, [c.id], TODAY).invoices_created  # noqa: E731
    created = race(server_engine, gen, gen, gen)
    assert sorted(created) == [0, 0, 5], "one worker did the work, the others found it done"
    assert scalar(s, select(func.count()).select_from(Invoice)) == 5
    assert scalar(s, select(func.count()).select_from(BilledPeriod)) == 5
    assert scalar(s, select(func.count()).select_from(OutboxEmail)) == 5
    numbers = sorted(s.execute(select(Invoice.number)).scalars())
    assert numbers == [1, 2, 3, 4, 5]


def test_workers_on_different_clients_share_one_gap_free_number_sequence(server_engine, server_session):
    s = server_session
    clients = [f.client(s) for _ in range(6)]
    for c in clients:
        for n in range(3):
            f.service(s, c, next_due_date=date(2026, 1, 12 + n), domain=f"s{n}.com")
    s.commit()
    batches = [[clients[0].id, clients[1].id], [clients[2].id, clients[3].id], [clients[4].id, clients[5].id]]
    race(server_engine, *[partial(lambda ids, session: generate_for_clients(session, ids, TODAY), b) for b in batches])
    numbers = sorted(s.execute(select(Invoice.number)).scalars())
    assert numbers == list(range(1, 19))


def test_workers_taking_the_first_invoice_numbers_ever_at_once_never_deadlock(server_engine, server_session):
    # The sequence row does not exist until the first invoice is numbered; four workers that
    # get there together must make it once, without a deadlock (no retry here), and share the
    # numbers without a gap or a repeat. Ten rounds: a deadlock between them needed chance.
    s = server_session
    for _ in range(10):
        s.execute(delete(InvoiceSequence))
        s.commit()
        firsts = race(server_engine, *[partial(allocate_invoice_numbers, count=3)] * 4, retries=0)
        assert sorted(firsts) == [1, 4, 7, 10]
        assert scalar(s, select(InvoiceSequence.last_number)) == 12


def test_a_payment_reported_twice_at_once_counts_once(server_engine, server_session):
    s = server_session
    c = f.client(s)
    svc = f.service(s, c, next_due_date=date(2026, 1, 12), amount=Decimal("10.00"))
    s.commit()
    [inv_id] = generate_for_clients(s, [c.id], TODAY).invoice_ids
    s.commit()
    pay = lambda session: apply_payment(session, inv_id, Decimal("10.00"), gateway="stripe",  # noqa: E731
                                        transaction_id="ch_1", as_of=TODAY, now=f_now()).outcome
    outcomes = race(server_engine, pay, pay)
    assert sorted(outcomes) == ["duplicate", "recorded"]
    assert scalar(s, select(func.count()).select_from(Transaction)) == 1
    s.expire_all()
    assert s.get(Service, svc.id).next_due_date == date(2026, 2, 12)
    assert s.get(Client, c.id).credit_balance == 0
    assert scalar(s, select(func.count()).select_from(OutboxEmail).where(
        OutboxEmail.template == "payment_confirmation")) == 1


def test_two_payments_that_together_overpay_leave_the_excess_as_credit_once(server_engine, server_session):
    s = server_session
    c = f.client(s)
    f.service(s, c, next_due_date=date(2026, 1, 12), amount=Decimal("10.00"))
    s.commit()
    [inv_id] = generate_for_clients(s, [c.id], TODAY).invoice_ids
    s.commit()
    def pay(txid, session):
        return apply_payment(session, inv_id, Decimal("7.00"), gateway="bank", transaction_id=txid, as_of=TODAY,
                             now=f_now())

    race(server_engine, partial(pay, "a"), partial(pay, "b"))
    s.expire_all()
    inv = s.get(Invoice, inv_id)
    assert (inv.status, inv.amount_paid, inv.balance_due) == ("Paid", Decimal("14.00"), 0)
    assert s.get(Client, c.id).credit_balance == Decimal("4.00")


def test_credit_applied_to_two_invoices_at_once_never_goes_below_zero(server_engine, server_session):
    from billingworker.domain.settings import save_settings

    s = server_session
    save_settings(s, auto_apply_credit=False)
    c = f.client(s)
    f.service(s, c, next_due_date=date(2026, 1, 12), amount=Decimal("10.00"), payment_method="a")
    f.service(s, c, next_due_date=date(2026, 1, 12), amount=Decimal("10.00"), payment_method="b")
    s.commit()
    ids = generate_for_clients(s, [c.id], TODAY).invoice_ids
    s.get(Client, c.id).credit_balance = Decimal("15.00")
    s.commit()
    def apply(invoice_id, session):
        return apply_credit_to_invoice(session, invoice_id, as_of=TODAY, source="test").applied

    applied = race(server_engine, *[partial(apply, i) for i in ids])
    assert sorted(applied) == [Decimal("5.00"), Decimal("10.00")]
    s.expire_all()
    assert s.get(Client, c.id).credit_balance == 0
    assert scalar(s, select(func.sum(CreditHistory.amount))) == Decimal("-15.00")


def test_the_same_request_twice_at_once_creates_one_add_funds_invoice(server_engine, server_session):
    s = server_session
    c = f.client(s)
    s.commit()

    def add(session):
        return run_once(session, "request:abc", "create_add_funds_invoice", lambda: {
            "invoice_id": create_add_funds_invoice(session, c.id, Decimal("20.00"), as_of=TODAY).invoice_id})

    results = race(server_engine, add, add)
    assert sorted(done for _, done in results) == [False, True]
    assert results[0][0] == results[1][0]
    assert scalar(s, select(func.count()).select_from(Invoice)) == 1


def f_now():
    from datetime import UTC, datetime

    return datetime(2026, 1, 10, 9, tzinfo=UTC)
