"""The daily run's jobs (docs/jobs.md): start it once per day, advance it task by task, run
each task's client batches; and the standalone collection jobs built on the same tasks.

A run is driven by messages, its state kept in the database: ``advance_daily_run`` is safe to
send at any time (the scheduler sends it for runs that stopped moving, e.g. after a worker was
killed), and a batch delivered twice is done and counted once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date
from typing import Any

from ..domain.errors import NotFound, ValidationError
from ..domain.models import DailyRun
from ..domain.runs import daily_run
from ..domain.runs.tasks import TASK_NAMES, eligible_clients
from ..domain.tasks import TaskResult
from ..runtime import runtime
from . import pipeline
from .arguments import (
    argument_rules,
    check_characters,
    parse_bool,
    parse_count,
    parse_date,
    parse_id,
    parse_optional_id,
)
from .base import current_message_id, job
from .batches import collection_day, collection_job
from .day_preview import preview_day
from .emails import delivery_messages, relay_clients_outbox
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)


def no_real_run_ahead(arguments: Mapping[str, Any]) -> None:
    """A real (not dry) run of a day after the installation's today is refused: it would take
    that day's only run before the day's data exists. A dry run may preview any day. Declared
    on the job, so ``enqueue``, ``dead-letters requeue --set`` and a raw message are refused alike."""
    as_of = arguments.get("as_of")
    if as_of is None or arguments.get("dry_run", False) is True:
        return
    day = parse_date("as_of", as_of)
    clock = runtime().clock
    today = clock.today()
    if day is not None and day > today:
        raise ValidationError("as_of", as_of, f"is after today ({today.isoformat()} in "
                              f"{getattr(clock, 'zone', 'the installation time zone')}): a real run of a future "
                              "day would take that day's only run early; preview it with dry_run=true")


@job()
@argument_rules(no_real_run_ahead, as_of=parse_date, dry_run=parse_bool)
def run_daily_automation(as_of=None, dry_run=False, trigger="job"):
    """Start the day's run (once per installation day), or report what it would do (dry run)."""
    day = collection_day(as_of)
    dry_run = parse_bool("dry_run", dry_run)
    if not isinstance(trigger, str) or len(trigger) > 30:
        raise ValidationError("trigger", trigger, "must be a short string")
    check_characters("trigger", trigger)
    if dry_run:
        report = preview_day(day)
        log.info("dry run of %s: %s", day, {t: r.preview[:20] for t, r in report.items()})
        return {task: pipeline.counts(result) for task, result in report.items()}
    return start_day(day, trigger=trigger)


def start_day(day: date, *, trigger: str) -> dict:
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        run_id = daily_run.start_run(work.session, day, trigger=trigger, now=rt.clock.now())
        if run_id is not None:
            work.send_after_commit(advance_daily_run.message(run_id=run_id))
        work.commit()
    if run_id is None:
        return {"run_date": day.isoformat(), "started": False, "reason": "the day already has a run"}
    return {"run_date": day.isoformat(), "started": True, "run_id": run_id}


#: A running task that counted no batch for this long gets its missing batches re-sent by the
#: next ``advance_daily_run`` (seconds); the scheduler sends one when a run stalls.
RESEND_IDLE_SECONDS = 5


@job()
@argument_rules(run_id=parse_id)
def advance_daily_run(run_id):
    """Move a run to its next task and fan that task out; idempotent."""
    run_id = parse_id("run_id", run_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        run = work.session.get(DailyRun, run_id)
        if run is None:
            raise NotFound("run_id", run_id, "daily run")
        session = work.session
        step = daily_run.next_step(session, run_id, now=rt.clock.now())
        idle = daily_run.task_idle_seconds(session, run_id, step.task, now=rt.clock.now()) if step.kind == "wait" else 0
        ranges: list[tuple[int, int]] = []
        if step.kind == "start_task":
            ranges = daily_run.batch_ranges(session, rt.batch_size)
            daily_run.set_batches(session, run_id, step.task, ranges)
            work.send_after_commit(*(run_daily_batch.message(run_id=run_id, task=step.task, batch_no=n,
                                                             first_client_id=first, last_client_id=last)
                                     for n, (first, last) in enumerate(ranges)))
            if not ranges:
                work.send_after_commit(advance_daily_run.message(run_id=run_id))
        work.commit()
    if step.kind == "wait" and step.task is not None and idle >= RESEND_IDLE_SECONDS:
        # The task is running but has not moved for a while: (re)send its missing batches (a
        # batch already counted is skipped by its job). This is how a run stalled by a killed
        # worker or a lost message is resumed; an advance that arrives while batches are being
        # counted re-sends nothing, so duplicates never multiply.
        resend_missing_batches(run_id, step.task)
    return {"run_id": run_id, "step": step.kind, "task": step.task, "batches": len(ranges)}


def resend_missing_batches(run_id: int, task: str) -> int:
    """Re-send the batches of a running task that are not counted yet (for stalled runs)."""
    with UnitOfWork(runtime().engine) as work:
        missing = daily_run.missing_batches(work.session, run_id, task)
        work.send_after_commit(*(run_daily_batch.message(run_id=run_id, task=task, batch_no=n, first_client_id=first,
                                                         last_client_id=last) for n, first, last in missing))
        work.commit()
    return len(missing)


@job(calls_outside=True)
@argument_rules(run_id=parse_id, batch_no=parse_count, first_client_id=parse_id, last_client_id=parse_id)
def run_daily_batch(run_id, task, batch_no, first_client_id, last_client_id):
    """One task over one batch of clients; done and counted once however often delivered."""
    run_id = parse_id("run_id", run_id)
    if task not in TASK_NAMES:
        raise ValidationError("task", task, f"is not one of {', '.join(TASK_NAMES)}")
    batch_no = parse_count("batch_no", batch_no)
    first, last = parse_id("first_client_id", first_client_id), parse_id("last_client_id", last_client_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        run = work.session.get(DailyRun, run_id)
        if run is None:
            raise NotFound("run_id", run_id, "daily run")
        # Internal message, so untrusted: it must name a batch exactly as the run recorded it.
        recorded = daily_run.recorded_batch(work.session, run_id, task, batch_no)
        if recorded != (first, last):
            raise ValidationError("batch_no", batch_no, f"is not a batch ({first}..{last}) of task {task} of run "
                                  f"{run_id}: the run recorded {recorded or 'no such batch'}")
        if run.status != "running" or daily_run.batch_done(work.session, run_id, task, batch_no):
            # Delivered again after its work was done (a redelivery, a resend after a broker
            # restart): the follow-ups it sent the first time may have been lost with the broker.
            advance = run.status == "running" and daily_run.awaits_advance(work.session, run_id, task)
            done_already = True
        else:
            done_already = False
            day, ids = run.run_date, eligible_clients(work.session, first, last)
    if done_already:
        relayed = relay_clients_outbox(first, last)
        if advance:
            advance_daily_run.send(run_id=run_id)
        return {"skipped": True, "emails_relayed": relayed, "advanced": advance}
    outcome: dict[str, bool] = {}

    def count_the_batch(work: UnitOfWork, result: TaskResult) -> bool:
        counted, complete = daily_run.record_batch(work.session, run_id, task, batch_no, result,
                                                   message_id=current_message_id(), now=rt.clock.now())
        outcome.update(counted=counted)
        if counted:  # else a twin counted this batch first: its work is kept, this copy rolled back
            work.send_after_commit(*delivery_messages(result.email_ids))
        if complete:  # the batch that completed its task moves the run on
            work.send_after_commit(advance_daily_run.message(run_id=run_id))
        return counted

    result = pipeline.run_task(task, ids, day, count_the_batch)
    return {"task": task, "batch": batch_no, "counted": outcome["counted"], **pipeline.counts(result)}


# --- the collection tasks as standalone jobs (their batches: ``batches.run_task_batch``) -----------

@job()
@argument_rules(client_id=parse_optional_id, as_of=parse_date)
def send_overdue_reminders(client_id=None, as_of=None):
    """The unpaid reminder and the overdue notices due today (SPEC §5), each once per invoice."""
    return collection_job("send_overdue_reminders", client_id, as_of)


@job()
@argument_rules(client_id=parse_optional_id, as_of=parse_date)
def apply_late_fees(client_id=None, as_of=None):
    """At most one late fee per invoice, once it is late enough (SPEC §6)."""
    return collection_job("apply_late_fees", client_id, as_of)


@job(calls_outside=True)
@argument_rules(client_id=parse_optional_id, as_of=parse_date)
def capture_due_payments(client_id=None, as_of=None):
    """Charge due invoices to stored cards of clients with auto CC processing (SPEC §8)."""
    return collection_job("capture_due_payments", client_id, as_of)
