"""The daily run's jobs (docs/jobs.md): start it once per day, advance it task by task, run
each task's client batches; and the standalone collection jobs built on the same tasks.

A run is driven by messages, its state kept in the database: ``advance_daily_run`` is safe to
send at any time (the scheduler sends it for runs that stopped moving, e.g. after a worker was
killed), and a batch delivered twice is done and counted once.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import date, timedelta
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ..db import session_factory, unit_of_work
from ..domain.errors import NotFound, ValidationError
from ..domain.failures import record_failures
from ..domain.models import Client, DailyRun
from ..domain.runs import daily_run
from ..domain.runs.daily_tasks import eligible_clients
from ..domain.runs.task_registry import SELF_COMMITTING, TASK_NAMES, task_function
from ..domain.tasks import TaskResult
from ..runtime import runtime
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
from .emails import relay_clients_outbox, send_emails

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
        report = dry_run_day(day)
        log.info("dry run of %s: %s", day, {t: r.preview[:20] for t, r in report.items()})
        return {task: _counts(result) for task, result in report.items()}
    return start_day(day, trigger=trigger)


def start_day(day: date, *, trigger: str) -> dict:
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        run_id = daily_run.start_run(session, day, trigger=trigger, now=rt.clock.now())
        session.commit()
    if run_id is None:
        return {"run_date": day.isoformat(), "started": False, "reason": "the day already has a run"}
    advance_daily_run.send(run_id=run_id)
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
    with unit_of_work(rt.engine) as session:
        run = session.get(DailyRun, run_id)
        if run is None:
            raise NotFound("run_id", run_id, "daily run")
        step = daily_run.next_step(session, run_id, now=rt.clock.now())
        idle = daily_run.task_idle_seconds(session, run_id, step.task, now=rt.clock.now()) if step.kind == "wait" else 0
        ranges: list[tuple[int, int]] = []
        if step.kind == "start_task":
            ranges = daily_run.batch_ranges(session, rt.batch_size)
            daily_run.set_batches(session, run_id, step.task, ranges)
        session.commit()
    if step.kind == "wait" and step.task is not None and idle >= RESEND_IDLE_SECONDS:
        # The task is running but has not moved for a while: (re)send its missing batches (a
        # batch already counted is skipped by its job). This is how a run stalled by a killed
        # worker or a lost message is resumed; an advance that arrives while batches are being
        # counted re-sends nothing, so duplicates never multiply.
        resend_missing_batches(run_id, step.task)
    elif step.kind == "start_task":
        if not ranges:
            advance_daily_run.send(run_id=run_id)
        for n, (first, last) in enumerate(ranges):
            run_daily_batch.send(run_id=run_id, task=step.task, batch_no=n, first_client_id=first,
                                 last_client_id=last)
    return {"run_id": run_id, "step": step.kind, "task": step.task, "batches": len(ranges)}


def resend_missing_batches(run_id: int, task: str) -> int:
    """Re-send the batches of a running task that are not counted yet (for stalled runs)."""
    with unit_of_work(runtime().engine) as session:
        missing = daily_run.missing_batches(session, run_id, task)
    for n, first, last in missing:
        run_daily_batch.send(run_id=run_id, task=task, batch_no=n, first_client_id=first, last_client_id=last)
    return len(missing)


@job()
@argument_rules(run_id=parse_id, batch_no=parse_count, first_client_id=parse_id, last_client_id=parse_id)
def run_daily_batch(run_id, task, batch_no, first_client_id, last_client_id):
    """One task over one batch of clients; done and counted once however often delivered."""
    run_id = parse_id("run_id", run_id)
    if task not in TASK_NAMES:
        raise ValidationError("task", task, f"is not one of {', '.join(TASK_NAMES)}")
    batch_no = parse_count("batch_no", batch_no)
    first, last = parse_id("first_client_id", first_client_id), parse_id("last_client_id", last_client_id)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        run = session.get(DailyRun, run_id)
        if run is None:
            raise NotFound("run_id", run_id, "daily run")
        # Internal message, so untrusted: it must name a batch exactly as the run recorded it.
        recorded = daily_run.recorded_batch(session, run_id, task, batch_no)
        if recorded != (first, last):
            raise ValidationError("batch_no", batch_no, f"is not a batch ({first}..{last}) of task {task} of run "
                                  f"{run_id}: the run recorded {recorded or 'no such batch'}")
        if run.status != "running" or daily_run.batch_done(session, run_id, task, batch_no):
            # Delivered again after its work was done (a redelivery, a resend after a broker
            # restart): the follow-ups it sent the first time may have been lost with the broker.
            advance = run.status == "running" and daily_run.awaits_advance(session, run_id, task)
            done_already = True
        else:
            done_already = False
            day, ids = run.run_date, eligible_clients(session, first, last)
    if done_already:
        relayed = relay_clients_outbox(first, last)
        if advance:
            advance_daily_run.send(run_id=run_id)
        return {"skipped": True, "emails_relayed": relayed, "advanced": advance}
    fn = task_function(task)
    if task in SELF_COMMITTING:
        result = fn(session_factory(rt.engine), ids, day, gateway_for=rt.gateway_for, now=rt.clock.now())
        with unit_of_work(rt.engine) as session:
            counted, complete = daily_run.record_batch(session, run_id, task, batch_no, result,
                                                       message_id=current_message_id(), now=rt.clock.now())
            session.commit()
    else:
        with unit_of_work(rt.engine) as session:
            result = run_batch(fn, task, session, ids, day)
            counted, complete = daily_run.record_batch(session, run_id, task, batch_no, result,
                                                       message_id=current_message_id(), now=rt.clock.now())
            if counted:
                session.commit()
    if counted:
        send_emails(result.email_ids)
    if complete:
        advance_daily_run.send(run_id=run_id)
    return {"task": task, "batch": batch_no, "counted": counted, **_counts(result)}


def run_batch(fn, task: str, session, ids: list[int], day: date, *, dry_run: bool = False) -> TaskResult:
    """``fn`` over the batch; if it fails as a whole, client by client so that one client's bad
    data costs that client, not the batch (SPEC: one bad client never stops the run)."""
    try:
        with session.begin_nested():
            return fn(session, ids, day, dry_run=dry_run)
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise
        whole = exc
    except Exception as exc:  # noqa: BLE001 - isolate below, then record
        whole = exc
    log.warning("task %s failed for a batch of %d clients (%s); retrying client by client", task, len(ids), whole)
    result = TaskResult(task=task)
    for client_id in ids:
        try:
            with session.begin_nested():
                result.merge(fn(session, [client_id], day, dry_run=dry_run))
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise
            result.failures.append(daily_run.client_failure(client_id, exc))
        except Exception as exc:  # noqa: BLE001 - recorded for the operator
            result.failures.append(daily_run.client_failure(client_id, exc))
    return result


def dry_run_day(day: date, *, engine: Engine | None = None) -> dict[str, TaskResult]:
    """What the day's run would do, task by task, through the tasks' own code with dry_run=True,
    inside transactions that are rolled back: nothing is written, no gateway is called.
    ``engine``: the database to preview (default the runtime's; the web console passes its own)."""
    rt = runtime()
    if engine is not None:
        rt = replace(rt, engine=engine)
    report = {task: TaskResult(task=task) for task in TASK_NAMES}
    with unit_of_work(rt.engine) as session:
        ranges = daily_run.batch_ranges(session, rt.batch_size)
    for first, last in ranges:
        with unit_of_work(rt.engine) as session:
            ids = eligible_clients(session, first, last)
            for task in TASK_NAMES:
                if task not in SELF_COMMITTING:
                    report[task].merge(run_batch(task_function(task), task, session, ids, day, dry_run=True))
            session.rollback()
        # Tasks that open their own sessions run once the batch's session is closed (on SQLite a
        # second session would wait for the first one's writer lock).
        for task in TASK_NAMES:
            if task in SELF_COMMITTING:
                report[task].merge(task_function(task)(session_factory(rt.engine), ids, day, gateway_for=rt.gateway_for,
                                                       now=rt.clock.now(), dry_run=True))
    return report


def _counts(result: TaskResult) -> dict:
    return {"clients": result.clients, "invoices": result.invoices_created, "fees": result.fees_added,
            "captures": result.captures, "credit_applied": result.credit_applied, "emails": result.emails_queued,
            "failures": len(result.failures), "amount": str(result.amount)}


# --- the collection tasks as standalone jobs ----------------------------------------------------

def collection_day(as_of) -> date:
    """The day of a collection job (today when ``as_of`` is null): never more than a day ahead,
    so that no message can charge a late fee, a reminder or a card before its time (a day of
    margin for installations whose senders' clocks run in another zone)."""
    today = runtime().clock.today()
    day = parse_date("as_of", as_of) or today
    if day > today + timedelta(days=1):
        raise ValidationError("as_of", as_of, f"is more than a day after today ({today.isoformat()}): "
                              "collections never run ahead of time")
    return day


def _task_job(task: str, client_id, as_of) -> dict:
    client_id = parse_optional_id("client_id", client_id)
    day = collection_day(as_of)
    rt = runtime()
    if client_id is None:
        with unit_of_work(rt.engine) as session:
            ranges = daily_run.batch_ranges(session, rt.batch_size)
        for first, last in ranges:
            run_task_batch.send(task=task, first_client_id=first, last_client_id=last, as_of=day.isoformat())
        return {"batches": len(ranges), "as_of": day.isoformat()}
    with unit_of_work(rt.engine) as session:
        if session.get(Client, client_id) is None:
            raise NotFound("client_id", client_id, "client")
    return _run_task(task, [client_id], day)


def _run_task(task: str, ids: list[int], day: date) -> dict:
    rt = runtime()
    fn = task_function(task)
    if task in SELF_COMMITTING:
        result = fn(session_factory(rt.engine), ids, day, gateway_for=rt.gateway_for, now=rt.clock.now())
        with unit_of_work(rt.engine) as session:
            record_failures(session, result.failures, actor=task, message_id=current_message_id(),
                                 now=rt.clock.now(), error="Failed")
            session.commit()
    else:
        with unit_of_work(rt.engine) as session:
            result = run_batch(fn, task, session, ids, day)
            record_failures(session, result.failures, actor=task, message_id=current_message_id(),
                                 now=rt.clock.now(), error="Failed")
            session.commit()
    send_emails(result.email_ids)
    return _counts(result)


@job()
@argument_rules(first_client_id=parse_id, last_client_id=parse_id, as_of=parse_date)
def run_task_batch(task, first_client_id, last_client_id, as_of):
    """One batch of a standalone collection job's fan-out (internal; see docs/jobs.md)."""
    if task not in TASK_NAMES:
        raise ValidationError("task", task, f"is not one of {', '.join(TASK_NAMES)}")
    first, last = parse_id("first_client_id", first_client_id), parse_id("last_client_id", last_client_id)
    if as_of is None:
        raise ValidationError("as_of", as_of, "is required for a batch")
    day = collection_day(as_of)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        ids = eligible_clients(session, first, last)
    return _run_task(task, ids, day)


@job()
@argument_rules(client_id=parse_optional_id, as_of=parse_date)
def send_overdue_reminders(client_id=None, as_of=None):
    """The unpaid reminder and the overdue notices due today (SPEC §5), each once per invoice."""
    return _task_job("send_overdue_reminders", client_id, as_of)


@job()
@argument_rules(client_id=parse_optional_id, as_of=parse_date)
def apply_late_fees(client_id=None, as_of=None):
    """At most one late fee per invoice, once it is late enough (SPEC §6)."""
    return _task_job("apply_late_fees", client_id, as_of)


@job()
@argument_rules(client_id=parse_optional_id, as_of=parse_date)
def capture_due_payments(client_id=None, as_of=None):
    """Charge due invoices to stored cards of clients with auto CC processing (SPEC §8)."""
    return _task_job("capture_due_payments", client_id, as_of)
