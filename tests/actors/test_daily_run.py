"""The daily run through a real worker: every task in order, once per day, resumable, previewable."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, inspect, select

from billingworker.actors import broker, run_daily_automation
from billingworker.clock import FixedClock
from billingworker.domain.models import (
    Client,
    DailyRun,
    DailyRunTask,
    Invoice,
    InvoiceLateFee,
    InvoiceReminder,
    JobFailure,
    PaymentCapture,
)
from billingworker.domain.runs.tasks import TASK_NAMES
from billingworker.domain.settings import save_settings
from billingworker.scheduler import Scheduler
from tests import factories as f
from tests.factories import RUN_DAY as DAY
from tests.factories import seed_day
from tests.factories import table_counts_at_rest as book

from .conftest import drain


def test_the_daily_run_does_every_task_once_per_day(session, worker, clock, mailer):
    a, b, c = seed_day(session)
    # b's invoice was generated long ago and is overdue now
    from billingworker.domain.billing.due_invoices import generate_for_clients

    generate_for_clients(session, [b.id], date(2025, 12, 10))
    session.commit()
    clock.set(datetime(2026, 1, 10, 9, tzinfo=UTC))

    run_daily_automation.send(as_of=DAY.isoformat())
    drain()
    [run] = session.execute(select(DailyRun)).scalars()
    assert run.status == "succeeded" and run.run_date == DAY
    tasks = list(session.execute(select(DailyRunTask).order_by(DailyRunTask.position)).scalars())
    assert [t.task for t in tasks] == list(TASK_NAMES)
    assert all(t.status == "done" for t in tasks)
    starts = [t.started_at for t in tasks]
    assert starts == sorted(starts), "tasks ran in order"
    by_task = {t.task: t for t in tasks}
    assert by_task["generate_due_invoices"].invoices_created == 2  # a's and c's
    assert by_task["apply_late_fees"].fees_added == 1  # b's
    assert by_task["capture_due_payments"].captures == 1  # c's
    assert session.scalar(select(func.count()).select_from(InvoiceLateFee)) == 1
    assert session.scalar(select(func.count()).select_from(InvoiceReminder).where(
        InvoiceReminder.status == "sent")) >= 1
    c_invoice = session.execute(select(Invoice).where(Invoice.client_id == c.id)).scalar_one()
    assert c_invoice.status == "Paid"

    before = book(session)
    sent = len(mailer.sent)
    run_daily_automation.send(as_of=DAY.isoformat())  # triggered again the same day
    run_daily_automation.send()  # and by the clock (FixedClock says 2026-01-10)
    drain()
    assert book(session) == before
    assert len(mailer.sent) == sent


def test_a_dry_run_writes_nothing_and_predicts_the_real_run(session, worker):
    a, b, c = seed_day(session)
    before = book(session)
    from billingworker.actors.day_preview import preview_day

    report = preview_day(DAY)
    assert book(session) == before
    assert report["generate_due_invoices"].invoices_created == 3
    assert {line["client_id"] for line in report["capture_due_payments"].preview} <= {c.id}

    run_daily_automation.send(as_of=DAY.isoformat())
    drain()
    assert session.scalar(select(func.count()).select_from(Invoice)) == \
        report["generate_due_invoices"].invoices_created


def test_the_dry_run_job_writes_nothing(session, worker):
    seed_day(session)
    before = book(session)
    run_daily_automation.send(as_of=DAY.isoformat(), dry_run=True)
    drain()
    assert book(session) == before


def test_a_client_that_keeps_failing_is_parked_then_unparked(session, worker, clock):
    from billingworker.domain.runs.daily_run import PARK_AFTER_FAILURES, unpark

    broken = f.client(session)
    session.flush()
    broken.currency_id = None
    f.service(session, broken, next_due_date=date(2026, 1, 15))
    fine = f.client(session)
    f.service(session, fine, next_due_date=date(2026, 1, 15))
    session.commit()
    for n in range(PARK_AFTER_FAILURES):
        clock.set(datetime(2026, 1, 10 + n, 9, 0, tzinfo=UTC))  # one run a day, on its day
        run_daily_automation.send(as_of=date(2026, 1, 10 + n).isoformat())
        drain()
    session.expire_all()
    parked = session.get(Client, broken.id)
    assert parked.parked_at is not None and "currency" in parked.parked_reason
    assert session.get(Client, fine.id).parked_at is None
    failures = session.scalar(select(func.count()).select_from(JobFailure).where(JobFailure.client_id == broken.id))
    assert failures == PARK_AFTER_FAILURES
    # parked: the next run skips it (no new failure)
    clock.set(datetime(2026, 1, 20, 9, 0, tzinfo=UTC))
    run_daily_automation.send(as_of=date(2026, 1, 20).isoformat())
    drain()
    assert session.scalar(select(func.count()).select_from(JobFailure).where(
        JobFailure.client_id == broken.id)) == failures
    assert unpark(session, broken.id)
    session.commit()
    assert session.get(Client, broken.id).failure_count == 0


def test_a_run_that_lost_its_messages_is_resumed_by_the_scheduler(session, engine, clock, mailer):
    """No worker: the run's batch messages are dropped (a crash), then a tick resumes it."""
    from dramatiq import Worker

    from billingworker import runtime as rt

    seed_day(session)
    rt.configure(engine=engine, clock=clock, mailer=mailer, batch_size=1)
    broker.flush_all()
    run_daily_automation.fn(as_of=DAY.isoformat())  # start the run; its messages wait in the broker
    broker.flush_all()  # ...and are lost
    session.rollback()
    assert session.execute(select(DailyRun.status)).scalar_one() == "running"
    session.rollback()
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        scheduler = Scheduler(engine, clock, stall_seconds=0)
        for _ in range(12):
            scheduler.tick()
            drain()
            session.rollback()
            status = session.execute(select(DailyRun.status)).scalar_one()
            session.rollback()
            if status != "running":
                break
        assert session.execute(select(DailyRun.status)).scalar_one() == "succeeded"
        assert session.scalar(select(func.count()).select_from(Invoice)) == 3
    finally:
        worker.stop()
        broker.flush_all()
        rt.reset()


def test_the_scheduler_fires_at_the_run_time_and_catches_up_a_missed_day(session, engine, worker, clock):
    save_settings(session, daily_run_time="09:00")
    session.commit()
    clock.set(datetime(2026, 1, 10, 8, 0, tzinfo=UTC))
    s = Scheduler(engine, clock)
    assert not any("started" in line for line in s.tick()), "a new installation waits for the run time"
    clock.set(datetime(2026, 1, 10, 9, 0, tzinfo=UTC))
    assert any("started" in line for line in s.tick())
    assert not any("started" in line for line in s.tick()), "once per day"
    drain()
    # the scheduler is down on the 11th; on the 12th at 08:00 it catches up the 11th
    clock.set(datetime(2026, 1, 12, 8, 0, tzinfo=UTC))
    assert any("2026-01-11" in line for line in s.tick())
    drain()
    session.rollback()
    assert sorted(session.execute(select(DailyRun.run_date)).scalars()) == [date(2026, 1, 10), date(2026, 1, 11)]


def test_the_scheduler_uses_the_installation_time_zone(session, engine, worker):
    save_settings(session, daily_run_time="09:00")
    session.commit()
    # 23:30 UTC on the 9th is 09:30 on the 10th in Sydney
    sydney = FixedClock(datetime(2026, 1, 9, 23, 30, tzinfo=UTC), "Australia/Sydney")
    lines = Scheduler(engine, sydney).tick()
    assert any("2026-01-10" in line for line in lines)


def test_two_schedulers_at_once_fire_one_run(server_engine, server_session):
    from billingworker import runtime as rt

    save_settings(server_session, daily_run_time="09:00")
    server_session.commit()
    clock = FixedClock(datetime(2026, 1, 10, 9, 5, tzinfo=UTC))
    rt.configure(engine=server_engine, clock=clock, batch_size=10)
    broker.flush_all()
    barrier = threading.Barrier(4)
    results = []

    def tick():
        barrier.wait()
        results.append(Scheduler(server_engine, clock).tick())

    threads = [threading.Thread(target=tick) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    broker.flush_all()
    rt.reset()
    assert sum(any("started" in line for line in r) for r in results) == 1
    assert server_session.scalar(select(func.count()).select_from(DailyRun)) == 1


def test_run_rows_exist_for_every_task(session):
    assert set(TASK_NAMES) == {"generate_due_invoices", "apply_credit", "capture_due_payments", "apply_late_fees",
                               "send_overdue_reminders"}
    assert "daily_runs" in inspect(session.get_bind()).get_table_names()
    assert PaymentCapture.__tablename__ == "payment_captures"


def test_a_declined_card_is_reported_but_never_parks_the_client(session, worker, clock):
    from billingworker.domain.runs.daily_run import PARK_AFTER_FAILURES

    c = f.client(session, auto_cc_processing=True)
    f.card(session, c, gateway_token="tok_4000000000000002", card_last_four="0002")
    f.service(session, c, next_due_date=date(2026, 1, 10), amount=Decimal("30.00"), payment_method="testgateway")
    session.commit()
    for n in range(PARK_AFTER_FAILURES + 1):
        clock.set(datetime(2026, 1, 10 + n, 9, 0, tzinfo=UTC))
        run_daily_automation.send(as_of=date(2026, 1, 10 + n).isoformat())
        drain()
    session.expire_all()
    assert session.get(Client, c.id).parked_at is None
    declines = session.scalar(select(func.count()).select_from(PaymentCapture).where(
        PaymentCapture.status == "declined"))
    assert declines == PARK_AFTER_FAILURES + 1, "retried daily, one attempt a day"


# --- no real run of a future day, whoever sends it (actors.daily.no_real_run_ahead) -------------

def test_a_message_for_tomorrows_real_run_is_refused_and_takes_no_run(session, worker):
    # Given the installation's today is DAY: a raw message asks for tomorrow's run
    run_daily_automation.send(as_of=date(2026, 1, 11).isoformat())
    run_daily_automation.send(as_of=date(2026, 1, 11).isoformat(), dry_run=True)  # a preview may look ahead
    drain()

    # Then: refused for as_of (dead-lettered), no daily run row; the preview ran
    assert session.scalar(select(func.count()).select_from(DailyRun)) == 0
    [failure] = session.scalars(select(JobFailure)).all()
    assert (failure.actor, failure.field) == ("run_daily_automation", "as_of")
    assert "is after today (2026-01-10 in UTC)" in failure.reason and "dry_run=true" in failure.reason
    [dead] = [m for m in broker.dead_letters if m.actor_name == "run_daily_automation"]
    assert dead.kwargs == {"as_of": "2026-01-11"}


def test_the_senders_check_refuses_a_future_real_run_like_the_job(worker):
    from billingworker.ops.enqueue_check import MessageRefused, check_message

    with pytest.raises(MessageRefused) as refused:
        check_message(run_daily_automation, {"as_of": "2026-01-11"})
    check_message(run_daily_automation, {"as_of": "2026-01-11", "dry_run": True})
    check_message(run_daily_automation, {"as_of": "2026-01-10"})

    assert refused.value.field == "as_of" and "is after today (2026-01-10 in UTC)" in str(refused.value)
