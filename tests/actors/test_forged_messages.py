"""Internal messages are untrusted: a forged daily-run batch changes nothing (issue: a batch with an
empty range was counted as done, so the real one was skipped and the day never billed)."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from billingworker import runtime as rt
from billingworker.actors import (
    apply_late_fees,
    capture_due_payments,
    run_daily_automation,
    run_daily_batch,
    send_overdue_reminders,
)
from billingworker.domain.models import DailyRun, DailyRunBatch, Invoice, InvoiceLateFee, JobFailure
from tests.factories import RUN_DAY as DAY
from tests.factories import seed_day

from .conftest import dead_letters, drain, hold_messages


def test_a_forged_batch_is_refused_and_the_real_one_still_bills(session, worker, monkeypatch):
    # Given a run whose first task has started, its real batch message not yet delivered
    seed_day(session)
    rt.configure(batch_size=10)  # one batch for the three clients
    held = hold_messages(monkeypatch, "run_daily_batch")
    real_send = run_daily_batch.send
    run_daily_automation.send(as_of=DAY.isoformat())
    drain()
    [real] = held
    monkeypatch.undo()
    session.rollback()
    run_id = session.scalar(select(DailyRun.id))
    session.rollback()

    # When forged batches arrive first: an empty range under the real batch's number, a batch the
    # task does not have, and a batch of a task that has not started
    forged = [
        {**real, "first_client_id": 999_999, "last_client_id": 999_999},
        {**real, "batch_no": 1},
        {**real, "task": "apply_late_fees"},
        {**real, "run_id": run_id, "first_client_id": real["first_client_id"] + 1},
    ]
    for kwargs in forged:
        run_daily_batch.send(**kwargs)
    drain()

    # Then each is dead-lettered at once with a reason, and nothing was counted
    assert len(dead_letters()) == len(forged)
    assert all(m.options.get("retries", 0) == 0 for m in dead_letters())
    reasons = session.scalars(select(JobFailure.reason).where(JobFailure.actor == "run_daily_batch")).all()
    assert len(reasons) == len(forged) and all("the run recorded" in r for r in reasons)
    assert session.scalar(select(func.count()).select_from(DailyRunBatch)) == 0
    session.rollback()

    # And the real batch still bills the day, and the run finishes
    real_send(**real)
    drain()
    session.rollback()
    assert session.scalar(select(func.count()).select_from(Invoice)) == 3
    assert session.scalar(select(DailyRun.status)) == "succeeded"


@pytest.mark.parametrize("job", [apply_late_fees, send_overdue_reminders, capture_due_payments, run_daily_automation])
def test_collections_never_run_ahead_of_time(session, worker, job):
    # Given an invoice due in 20 days (a fee would be charged if "today" were 2099)
    seed_day(session)
    before = session.scalar(select(func.count()).select_from(InvoiceLateFee))
    session.rollback()

    # When a message asks for a day far ahead
    job.send(as_of="2099-12-31")
    drain()

    # Then it is refused at once, naming as_of, and nothing was charged or reminded
    [dead] = dead_letters()
    assert dead.options.get("retries", 0) == 0
    assert session.scalar(select(JobFailure.field).where(JobFailure.actor == job.actor_name)) == "as_of"
    assert session.scalar(select(func.count()).select_from(InvoiceLateFee)) == before
    assert session.scalar(select(func.count()).select_from(DailyRun)) == 0
