"""A billing day runs once (issue 8, part 3): generate due invoices, and every daily task.

Running a day twice (the same batch message delivered again, a second fan-out, two workers at
once) has the effect of running it once: the second pass bills nothing the first pass billed or
would have billed, even when the first pass moved a thing's due date into the generation window
(an invoice paid from credit at creation, a card capture or apply credit the same day). The data
says so: ``billed_periods.billed_on`` (the generation's day) with a unique (thing, billing day)
index. SQLite and PostgreSQL; the races on PostgreSQL only.
"""

from __future__ import annotations

import logging
import threading
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from unittest import mock

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from billingworker.adapters.gateway import gateway_for
from billingworker.db import session_factory
from billingworker.domain.billing import due_invoices, due_things
from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.billing.invoice_store import is_billed_period_clash
from billingworker.domain.billing.manual_invoices import invoice_selected_items
from billingworker.domain.models import (
    Addon,
    Base,
    BilledPeriod,
    Client,
    CreditHistory,
    Invoice,
    InvoiceStatus,
    JobFailure,
    OutboxEmail,
    Service,
)
from billingworker.domain.payments.credit import change_credit
from billingworker.domain.runs.tasks import TASK_NAMES, TASKS, apply_credit_for_clients
from billingworker.domain.settings import save_settings
from billingworker.store.conflicts import is_transient
from tests import factories as f
from tests.factories import race

DAY = date(2026, 12, 10)
NEXT_DAY = DAY + timedelta(days=1)
#: The addon's period that started on 11-19 was never billed (the client's first day with us).
OVERDUE = date(2026, 11, 19)
#: Its next period: inside DAY's 14-day window (12-24) once 11-19 is paid.
AHEAD = date(2026, 12, 19)


def credit_paid_addon(session):
    """A client with 10.00 of credit and a 2.00 monthly addon due since 11-19, on a service due
    well after the window. Billed on DAY, paid at creation from the credit: the addon's
    ``next_due_date`` then moves to 12-19, inside DAY's generation window."""
    c = f.client(session, credit_balance=Decimal("10.00"))
    s = f.service(session, c, next_due_date=date(2027, 1, 5))
    a = f.addon(session, s, next_due_date=OVERDUE)
    session.commit()
    return c, s, a


def generate(session, *clients, as_of: date = DAY, **kw):
    result = generate_for_clients(session, [c.id for c in clients], as_of, **kw)
    session.commit()
    return result


def periods(session, item_type: str | None = None) -> list[tuple[str, int, date, date | None]]:
    """(type, id, due date, billing day) of every claim, in that order."""
    session.expire_all()
    q = select(BilledPeriod.item_type, BilledPeriod.item_id, BilledPeriod.due_date, BilledPeriod.billed_on)
    if item_type is not None:
        q = q.where(BilledPeriod.item_type == item_type)
    return [tuple(r) for r in session.execute(q.order_by(BilledPeriod.item_type, BilledPeriod.item_id,
                                                         BilledPeriod.due_date))]


def count(session, model, *where) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(model).where(*where))


def book(session) -> dict[str, int]:
    """Rows per table: a second pass that has the effect of none leaves every count alone."""
    session.expire_all()
    return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def credit(session, client) -> Decimal:
    session.expire_all()
    return session.get(Client, client.id).credit_balance


# --------------------------------------------------------------------------- the reported case

def test_a_period_that_became_due_during_the_day_waits_for_the_next_day(session):
    # Given an addon due since 11-19 and credit enough to pay it (and the next period too)
    c, _, a = credit_paid_addon(session)
    # When the day is generated: 11-19 is billed and paid at creation from the credit
    first = generate(session, c)
    assert (first.invoices_created, first.failures) == (1, [])
    session.expire_all()
    assert session.get(Addon, a.id).next_due_date == AHEAD, "paying moved the addon into the window"
    # and generated again the same day (the batch delivered again, a second fan-out)
    second = generate(session, c)
    # Then the second pass bills nothing: 12-19 was not due when the day began
    assert (second.invoices_created, second.items_invoiced, second.failures) == (0, 0, [])
    [inv] = session.execute(select(Invoice)).scalars()
    assert (inv.status, inv.credit_applied, inv.date_due) == (InvoiceStatus.PAID, Decimal("2.00"), OVERDUE)
    assert credit(session, c) == Decimal("8.00")
    assert periods(session) == [("addon", a.id, OVERDUE, DAY)]
    # And the next day bills the period that became due, once
    assert generate(session, c, as_of=NEXT_DAY).invoices_created == 1
    assert generate(session, c, as_of=NEXT_DAY).invoices_created == 0
    assert periods(session) == [("addon", a.id, OVERDUE, DAY), ("addon", a.id, AHEAD, NEXT_DAY)]


def test_two_passes_over_a_batch_bill_what_one_pass_bills(session):
    # Given a batch with every kind of thing, some paid at creation from credit, and a billable
    # item that recurs daily and is behind (billing it moves its due date into the window)
    saver, svc, addon = credit_paid_addon(session)
    rich = f.client(session, credit_balance=Decimal("100.00"))
    f.service(session, rich, next_due_date=date(2026, 11, 20), domain="rich.com")  # next: 12-20
    f.domain(session, rich, next_due_date=date(2026, 12, 20), domain="rich.com")
    plain = f.client(session)
    f.service(session, plain, next_due_date=date(2026, 12, 15))
    daily = f.billable(session, plain, due_date=DAY - timedelta(days=3), invoice_action="recur",
                       recur_every=1, recur_cycle="Days", description="Metered")
    f.billable(session, plain, due_date=DAY, invoice_action="next_run", description="Setup")
    session.commit()
    batch = [saver, rich, plain]
    # When the batch is generated twice the same day
    first = generate(session, *batch)
    after_first = book(session)
    preview = generate_for_clients(session, [c.id for c in batch], DAY, dry_run=True)
    session.rollback()
    second = generate(session, *batch)
    # Then the second pass (and its dry run) finds nothing; the first billed each thing once
    assert first.failures == [] and first.items_invoiced == 6
    assert preview.plans == []
    assert (second.invoices_created, second.items_invoiced, second.failures) == (0, 0, [])
    assert book(session) == after_first
    assert all(billed_on == DAY for *_, billed_on in periods(session))
    assert [p[:3] for p in periods(session, "billable")][0] == ("billable", daily.id, DAY - timedelta(days=3))


def test_apply_credit_paying_an_invoice_of_the_day_does_not_let_generation_bill_ahead(session):
    # Given an overdue service billed today while the client had no credit
    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2026, 11, 21))
    session.commit()
    assert generate(session, c).invoices_created == 1
    # When credit arrives, the day's "apply credit" pays the invoice (next due date: 12-21)
    change_credit(session, c.id, Decimal("50.00"), "Top-up", as_of=DAY)
    session.commit()
    assert apply_credit_for_clients(session, [c.id], DAY).credit_applied == 1
    session.commit()
    session.expire_all()
    assert session.get(Service, s.id).next_due_date == date(2026, 12, 21)
    # Then generation run again that day bills nothing; the next day bills 12-21
    assert generate(session, c).invoices_created == 0
    assert generate(session, c, as_of=NEXT_DAY).invoices_created == 1


# --------------------------------------------------------------------------- the data guard

def test_the_database_refuses_a_second_period_of_a_thing_on_one_billing_day(session):
    c, _, a = credit_paid_addon(session)
    [invoice_id] = generate(session, c).invoice_ids
    # A second claim for the addon on the same billing day, for another period: refused
    with pytest.raises(IntegrityError) as refused:
        with session.begin_nested():
            session.add(BilledPeriod(item_type="addon", item_id=a.id, due_date=AHEAD, invoice_id=invoice_id,
                                     billed_on=DAY))
            session.flush()
    assert is_billed_period_clash(refused.value)
    # The same period on another day, or without a billing day (another path): accepted
    with session.begin_nested():
        session.add(BilledPeriod(item_type="addon", item_id=a.id, due_date=AHEAD, invoice_id=invoice_id,
                                 billed_on=None))
        session.add(BilledPeriod(item_type="addon", item_id=a.id, due_date=date(2027, 1, 19),
                                 invoice_id=invoice_id, billed_on=None))
        session.add(BilledPeriod(item_type="addon", item_id=a.id, due_date=date(2027, 2, 19),
                                 invoice_id=invoice_id, billed_on=NEXT_DAY))
        session.flush()
    session.rollback()


def test_a_pass_that_misses_the_days_claim_is_refused_and_counts_as_already_billed(session, monkeypatch, caplog):
    """A reader that does not see today's claim (another worker's, committed after it looked)
    plans the next period; the unique index refuses it, and the clash is "already billed":
    no failure (a race must never park a client), and the rest of the batch is billed."""
    c, _, a = credit_paid_addon(session)
    other = f.client(session)
    f.service(session, other, next_due_date=date(2026, 12, 15))
    session.commit()
    assert generate(session, c).invoices_created == 1
    real = due_things._billed_periods_of

    def blind_to_the_day(*args, **kwargs):
        claims = real(*args, **kwargs)
        claims.that_day.clear()
        return claims

    monkeypatch.setattr(due_things, "_billed_periods_of", blind_to_the_day)
    caplog.set_level(logging.INFO, logger=due_invoices.__name__)
    second = generate(session, c, other)
    assert (second.invoices_created, second.failures) == (1, [])
    assert "batch write failed" in caplog.text, "the unique index refused the claim"
    assert f"client {c.id} already billed for {DAY}" in caplog.text
    assert [i.client_id for i in session.execute(select(Invoice).order_by(Invoice.id)).scalars()] == [c.id, other.id]
    assert periods(session, "addon") == [("addon", a.id, OVERDUE, DAY)]
    assert credit(session, c) == Decimal("8.00")


def test_a_clash_that_is_not_a_claim_is_still_a_failure(session, monkeypatch):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 12, 15))
    session.commit()

    def broken(*args, **kwargs):
        raise IntegrityError("INSERT INTO invoices ...", None, Exception("CHECK constraint failed: balance_due"))

    monkeypatch.setattr(due_invoices, "write_plans", broken)
    result = generate(session, c)
    assert [(x.client_id, "balance_due" in x.reason) for x in result.failures] == [(c.id, True)]


# --------------------------------------------------------------------------- two workers at once

def test_workers_generating_the_same_day_at_once_bill_it_once(server_engine, server_session):
    s = server_session
    c, _, a = credit_paid_addon(s)
    other = f.client(s)
    f.service(s, other, next_due_date=date(2026, 12, 15))
    s.commit()

    def gen(session):
        result = generate_for_clients(session, [c.id, other.id], DAY)
        return result.invoices_created, result.failures

    results = race(server_engine, gen, gen, gen)
    assert sorted(n for n, _ in results) == [0, 0, 2], "one worker billed, the others found it done"
    assert [failures for _, failures in results] == [[], [], []]
    s.rollback()
    assert periods(s, "addon") == [("addon", a.id, OVERDUE, DAY)]
    assert count(s, Invoice) == 2 and credit(s, c) == Decimal("8.00")


def test_without_the_client_lock_the_database_refuses_the_second_worker(server_engine, server_session, caplog):
    """Two workers that both read the day before either writes (the client lock bypassed): the
    claims' unique indexes make the second one wait, then refuse it; it counts as done."""
    s = server_session
    c, _, a = credit_paid_addon(s)
    real_lock, real_find = due_invoices.lock_clients, due_invoices.find_due

    def unlocked(session, client_ids):
        with session_factory(server_engine)() as reader:  # reads the clients, keeps no lock
            return real_lock(reader, client_ids)

    both_read = threading.Barrier(2, timeout=30)
    looked: set[int] = set()

    def find_then_wait(*args, **kwargs):
        due = real_find(*args, **kwargs)
        if threading.get_ident() not in looked:
            looked.add(threading.get_ident())
            both_read.wait()  # both planned the same period from the same state
        return due

    transient: list[Exception] = []

    def gen(session):
        # InnoDB may instead pick the second worker as a deadlock victim: transient, so run
        # again (as the job's retry would), when it finds the day billed.
        for _ in range(3):
            try:
                result = generate_for_clients(session, [c.id], DAY)
                return result.invoices_created, result.failures
            except DBAPIError as exc:
                if not is_transient(exc):
                    raise
                transient.append(exc)
                session.rollback()
        raise AssertionError(f"still transient after 3 attempts: {transient}")

    with mock.patch.object(due_invoices, "lock_clients", unlocked), \
            mock.patch.object(due_invoices, "find_due", find_then_wait):
        results = race(server_engine, gen, gen)
    assert sorted(n for n, _ in results) == [0, 1]
    assert [failures for _, failures in results] == [[], []]
    assert "batch write failed (IntegrityError)" in caplog.text or (
        server_engine.dialect.name != "postgresql" and transient), "the second worker's claim was refused"
    s.rollback()
    assert periods(s) == [("addon", a.id, OVERDUE, DAY)]
    assert count(s, Invoice) == 1 and count(s, CreditHistory) == 1 and credit(s, c) == Decimal("8.00")


# --------------------------------------------------------------------------- through the actors

@pytest.fixture
def actor_worker(engine):
    """The actors on the in-process broker in a real Dramatiq worker (as in tests/actors)."""
    from dramatiq import Worker

    from billingworker import runtime as rt
    from billingworker.actors import broker
    from billingworker.adapters.mailer import MemoryMailer
    from billingworker.clock import FixedClock

    rt.configure(engine=engine, clock=FixedClock(datetime.combine(DAY, time(9), tzinfo=UTC)),
                 mailer=MemoryMailer(), mail_from="Billing <billing@example.com>", batch_size=2)
    broker.flush_all()
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    yield broker
    _drain(broker)
    worker.stop()
    broker.flush_all()
    rt.reset()


def _drain(broker) -> None:
    for _ in range(3):
        for queue in ("billing", "emails"):
            broker.join(queue)


def test_the_same_batch_message_delivered_twice_bills_once(session, actor_worker):
    from billingworker.actors import generate_due_invoices, generate_due_invoices_batch

    broker = actor_worker
    c, _, a = credit_paid_addon(session)
    other = f.client(session)
    f.service(session, other, next_due_date=date(2026, 12, 15))
    session.commit()
    message = generate_due_invoices_batch.send(client_ids=[c.id, other.id], as_of=DAY.isoformat())
    session.rollback()
    _drain(broker)
    assert count(session, Invoice) == 2
    session.rollback()
    broker.enqueue(message)  # the very same message again (at-least-once delivery)
    _drain(broker)
    # and a whole second fan-out for the day
    generate_due_invoices.send(as_of=DAY.isoformat())
    _drain(broker)
    assert count(session, Invoice) == 2
    assert count(session, OutboxEmail, OutboxEmail.template == "invoice_created") == 2
    assert count(session, JobFailure) == 0
    assert periods(session, "addon") == [("addon", a.id, OVERDUE, DAY)]
    assert list(broker.dead_letters) == []


# --------------------------------------------------------------------------- other paths unchanged

def test_invoice_selected_items_on_the_same_day_still_works(session):
    # Given the day's generation billed the addon's 11-19 (paid from credit: next due 12-19)
    c, _, a = credit_paid_addon(session)
    generate(session, c)
    # When an admin invoices the addon's next renewal by hand, twice, the same day
    for expected in (AHEAD, date(2027, 1, 19)):
        manual = invoice_selected_items(session, c.id, [("addon", a.id)], as_of=DAY)
        session.commit()
        assert manual.refused == [] and len(manual.invoice_ids) == 1
        assert session.get(Invoice, manual.invoice_ids[0]).date_due == expected
    # Then both are billed (their claims take no billing day), and generation adds nothing
    assert generate(session, c).invoices_created == 0
    assert periods(session) == [("addon", a.id, OVERDUE, DAY), ("addon", a.id, AHEAD, None),
                                ("addon", a.id, date(2027, 1, 19), None)]
    assert credit(session, c) == Decimal("4.00")


def test_continuous_generation_still_bills_one_period_per_thing_per_day(session):
    save_settings(session, continuous_invoice_generation=True)
    c = f.client(session, credit_balance=Decimal("100.00"))
    s = f.service(session, c, next_due_date=date(2026, 9, 10))  # three periods behind
    session.commit()
    for day in (DAY, DAY, NEXT_DAY, NEXT_DAY):
        generate(session, c, as_of=day)
    assert periods(session) == [("service", s.id, date(2026, 9, 10), DAY),
                                ("service", s.id, date(2026, 10, 10), NEXT_DAY)]


def test_a_period_cancelled_during_the_day_may_be_billed_again_that_day_but_no_other(session):
    # Not continuous: the day billed 12-15, the invoice was cancelled; the same period is billed
    # again the same day (the new invoice takes the claim over, billing day included)
    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2026, 12, 15))
    session.commit()
    [old] = generate(session, c).invoice_ids
    session.get(Invoice, old).status = InvoiceStatus.CANCELLED
    session.commit()
    [new] = generate(session, c).invoice_ids
    assert periods(session) == [("service", s.id, date(2026, 12, 15), DAY)]
    assert session.get(BilledPeriod, ("service", s.id, date(2026, 12, 15))).invoice_id == new != old
    # Continuous: the thing has moved on to its next period, which waits for the next day
    save_settings(session, continuous_invoice_generation=True)
    c2 = f.client(session)
    s2 = f.service(session, c2, next_due_date=date(2026, 9, 10))  # catching up
    session.commit()
    [first] = generate(session, c2).invoice_ids
    session.get(Invoice, first).status = InvoiceStatus.CANCELLED
    session.commit()
    again = generate(session, c2)
    assert (again.invoices_created, again.failures) == (0, [])
    assert generate(session, c2, as_of=NEXT_DAY).invoices_created == 1
    assert [p[2:] for p in periods(session) if p[1] == s2.id] == [(date(2026, 9, 10), DAY),
                                                                  (date(2026, 10, 10), NEXT_DAY)]


# --------------------------------------------------------------------------- every daily task

def _whole_day(session, engine, clients, tasks=TASK_NAMES) -> dict[str, object]:
    """The tasks of the daily run, in order, for ``clients`` on DAY, as the run calls them."""
    ids = [c.id for c in clients]
    out = {}
    for name in tasks:
        session.rollback()
        task = TASKS[name]
        if task.own_transactions:
            out[name] = task.run(session_factory(engine), ids, DAY, gateway_for=gateway_for,
                                 now=datetime.combine(DAY, time(9), tzinfo=UTC))
        else:
            out[name] = task.run(session, ids, DAY)
            session.commit()
    return out


def test_every_daily_task_run_twice_for_a_day_has_the_effect_of_once(engine, session):
    save_settings(session, late_fee_days=3, late_fee_type="fixed", late_fee_amount="5.00")
    # paid from credit at creation (next due date 12-19)
    saver, _, _ = credit_paid_addon(session)
    # captured from the card today (next due date 12-20)
    carded = f.client(session, auto_cc_processing=True)
    f.card(session, carded)
    f.service(session, carded, next_due_date=date(2026, 11, 20))
    # billed today, then paid by "apply credit" with credit that arrives after generation (12-21)
    topup = f.client(session)
    f.service(session, topup, next_due_date=date(2026, 11, 21))
    # billed long ago, unpaid: a late fee and an overdue notice today
    late = f.client(session)
    f.service(session, late, next_due_date=date(2026, 11, 25))
    session.commit()
    generate(session, late, as_of=date(2026, 11, 20))
    clients = [saver, carded, topup, late]

    first = _whole_day(session, engine, clients, TASK_NAMES[:1])
    change_credit(session, topup.id, Decimal("50.00"), "Top-up", as_of=DAY)
    session.commit()
    first.update(_whole_day(session, engine, clients, TASK_NAMES[1:]))
    assert first["generate_due_invoices"].invoices_created == 3
    assert first["apply_credit"].credit_applied == 1
    assert first["capture_due_payments"].captures == 1
    assert first["apply_late_fees"].fees_added == 1
    assert len(first["send_overdue_reminders"].email_ids) == 1
    assert count(session, Invoice, Invoice.status == InvoiceStatus.PAID) == 3
    before = book(session)
    balances = {c.id: credit(session, c) for c in clients}

    again = _whole_day(session, engine, clients)
    for name, result in again.items():
        done = (result.invoices_created, result.credit_applied, result.captures, result.fees_added)
        assert done == (0, 0, 0, 0), name
        assert (result.email_ids, result.failures) == ([], []), name
    assert book(session) == before
    assert {c.id: credit(session, c) for c in clients} == balances


def test_two_workers_applying_credit_at_once_apply_it_once(server_engine, server_session):
    s = server_session
    c = f.client(s)
    f.service(s, c, next_due_date=date(2026, 12, 15), amount=Decimal("30.00"))
    s.commit()
    generate(s, c)
    change_credit(s, c.id, Decimal("20.00"), "Top-up", as_of=DAY)
    s.commit()
    results = race(server_engine, *[lambda session: apply_credit_for_clients(session, [c.id], DAY)] * 3)
    assert sorted(r.credit_applied for r in results) == [0, 0, 1]
    s.rollback()
    [inv] = s.execute(select(Invoice)).scalars()
    assert (inv.credit_applied, inv.balance_due, inv.status) == (Decimal("20.00"), Decimal("10.00"), "Unpaid")
    assert credit(s, c) == Decimal("0.00")
    assert count(s, CreditHistory, CreditHistory.amount < 0) == 1
