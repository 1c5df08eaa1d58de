"""The whole-day preview (``daily-run --dry-run``) chains the tasks: each sees what the ones
before it did, through the real code in a transaction that is rolled back, with a gateway that
charges nothing. It must predict the real run, task by task, and leave every row as it was."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select

from billingworker import runtime as rt
from billingworker.actors import run_daily_automation
from billingworker.actors.day_preview import preview_day
from billingworker.adapters.gateway import TEST_GATEWAY
from billingworker.clock import FixedClock
from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.models import DailyRunTask
from billingworker.domain.runs.tasks import TASK_NAMES
from tests import factories as f
from tests.factories import RUN_DAY as DAY
from tests.factories import seed_day
from tests.factories import table_counts_at_rest as book

from .conftest import drain

COUNTS = ("invoices_created", "fees_added", "captures", "credit_applied", "emails_queued")


def test_the_preview_sees_its_own_invoices_and_predicts_the_run_task_by_task(session, worker, clock):
    # Given a day where a card client's invoice is created and captured the same day, and an
    # older invoice that gets a late fee and its notice
    a, b, c = seed_day(session)
    generate_for_clients(session, [b.id], date(2025, 12, 10))
    session.commit()
    clock.set(datetime(2026, 1, 10, 9, tzinfo=UTC))
    before = book(session)

    # When the day is previewed
    report = preview_day(DAY)

    # Then the capture task saw the invoice the generation task created moments before (a
    # preview of each task on the database as it is could not), and no gateway was called
    capture = report["capture_due_payments"]
    assert capture.captures == 1 and [line["client_id"] for line in capture.preview] == [c.id]
    assert capture.amount == Decimal("30.00")
    assert TEST_GATEWAY.calls == 0 and TEST_GATEWAY.charges == []
    # And nothing was written
    assert book(session) == before

    # When the day is run for real
    run_daily_automation.send(as_of=DAY.isoformat())
    drain()

    # Then every task did what the preview said
    done = {t.task: t for t in session.execute(select(DailyRunTask)).scalars()}
    for task in TASK_NAMES:
        predicted = report[task]
        assert [getattr(done[task], n) for n in COUNTS] == [
            predicted.invoices_created, predicted.fees_added, predicted.captures, predicted.credit_applied,
            predicted.emails_queued], task


def test_a_card_at_a_gateway_the_worker_cannot_use_fails_in_the_preview_as_in_the_run(session, worker, clock,
                                                                                       monkeypatch):
    # Given the card client, and a worker where the test gateway is switched off
    a, b, c = seed_day(session)
    monkeypatch.setenv("PAYMENT_GATEWAYS", "")
    clock.set(datetime(2026, 1, 10, 9, tzinfo=UTC))

    # When the day is previewed
    report = preview_day(DAY)

    # Then the card is not "captured" by the preview double: the preview says what the run would
    capture = report["capture_due_payments"]
    assert capture.captures == 0
    assert [f.client_id for f in capture.failures] == [c.id]


def test_the_preview_never_holds_the_invoice_number_sequence(pg_engine, pg_session):
    import threading

    from sqlalchemy import text

    from billingworker.domain.models import InvoiceSequence
    from billingworker.domain.runs import tasks

    # Given a client with a thing due, and invoice numbers already in use
    c = f.client(pg_session)
    f.service(pg_session, c, next_due_date=DAY, amount=Decimal("10.00"))
    pg_session.add(InvoiceSequence(name="invoice", last_number=41))
    pg_session.commit()
    rt.configure(engine=pg_engine, clock=FixedClock(datetime(2026, 1, 10, 9, tzinfo=UTC)))
    # (the preview pauses in its last task, the batch's transaction still open)
    in_last_task, resume = threading.Event(), threading.Event()
    real = tasks.TASKS["send_overdue_reminders"]

    def paused(*args, **kwargs):
        in_last_task.set()
        resume.wait(20)
        return real.run(*args, **kwargs)

    previewing = threading.Thread(target=preview_day, args=(DAY,))
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setitem(tasks.TASKS, "send_overdue_reminders", tasks.DailyTask("send_overdue_reminders", paused))
            mp.setattr(tasks, "DAILY_TASKS", tuple(tasks.TASKS.values()))
            mp.setattr("billingworker.actors.day_preview.DAILY_TASKS", tuple(tasks.TASKS.values()))
            previewing.start()
            assert in_last_task.wait(20)
            # When a real job takes the next invoice number while the preview has invoiced the client
            with pg_engine.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '2s'"))
                number = conn.execute(text("UPDATE invoice_sequences SET last_number = last_number + 1 "
                                           "RETURNING last_number")).scalar_one()
            # Then it did not wait for the preview, and got the next real number
            assert number == 42
    finally:
        resume.set()
        previewing.join(30)
        rt.reset()
