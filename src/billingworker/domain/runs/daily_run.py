"""The daily run's bookkeeping (SPEC §15): one run per installation day, its tasks in order,
each task fanned out over client batches, every batch counted once, failing clients parked.

The state lives in the database (``daily_runs``, ``daily_run_tasks``, ``daily_run_batches``),
so any worker can pick up where a killed one stopped: ``next_step`` tells what is left to do,
and doing it twice is harmless (batches are idempotent and counted by primary key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from sqlalchemy import func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...store.arrays import among
from ...store.returning import update_returning
from ..failures import ClientFailure, record_failures
from ..models import Client, ClientStatus, DailyRun, DailyRunBatch, DailyRunTask
from ..reports.reconciliation import reconcile, record_reconciliation
from ..settings import parse_run_time
from ..tasks import TaskResult
from .tasks import TASK_NAMES

#: A client whose batch work fails this many daily runs in a row is parked.
PARK_AFTER_FAILURES = 3


def start_run(session: Session, run_date: date, *, trigger: str, now: datetime) -> int | None:
    """Create the day's run and its tasks; None if the day already has one (the unique index
    decides, so two schedulers racing start one run). The caller commits."""
    try:
        with session.begin_nested():
            run_id = session.execute(insert(DailyRun).values(
                run_date=run_date, dry_run=False, status="running", trigger=trigger,
                started_at=now)).inserted_primary_key[0]
    except IntegrityError:
        return None
    session.execute(insert(DailyRunTask), [
        {"run_id": run_id, "task": task, "position": n, "status": "pending"} for n, task in enumerate(TASK_NAMES)])
    return run_id


def batch_ranges(session: Session, batch_size: int) -> list[tuple[int, int]]:
    """(first id, last id) of each batch of clients, by keyset: the batches a task fans out to."""
    ranges, after = [], 0
    while True:
        ids = list(session.execute(
            select(Client.id).where(Client.id > after, Client.status != ClientStatus.CLOSED,
                                    Client.parked_at.is_(None)).order_by(Client.id).limit(batch_size)).scalars())
        if not ids:
            return ranges
        ranges.append((ids[0], ids[-1]))
        after = ids[-1]


@dataclass(frozen=True)
class Step:
    """What a run needs next: start a task's batches, or nothing (finished), or wait."""

    kind: str  # "start_task" | "finish" | "wait" | "done"
    task: str | None = None
    #: With "finish": whether the reconciliation recorded with the run found the books clean.
    books_clean: bool | None = None


def next_step(session: Session, run_id: int, *, now: datetime) -> Step:
    """Advance the run's state as far as the database allows, and say what to enqueue.

    Locks the run's task rows. A task whose batches are all counted is marked done; the first
    pending task is marked running (the caller then enqueues its batches); when every task is
    done the run is marked succeeded. Calling it again changes nothing that is already true.
    """
    run = session.execute(select(DailyRun).where(DailyRun.id == run_id).with_for_update()).scalar_one()
    if run.status != "running":
        return Step("done")
    tasks = list(session.execute(select(DailyRunTask).where(DailyRunTask.run_id == run_id)
                                 .order_by(DailyRunTask.position).with_for_update()).scalars())
    for task in tasks:
        if task.status == "done":
            continue
        if task.status == "running":
            if task.batches_done >= task.batches_total:
                task.status, task.finished_at = "done", now
                continue
            return Step("wait", task.task)
        task.status, task.started_at = "running", now
        session.flush()
        return Step("start_task", task.task)
    failures = sum(t.failures for t in tasks)
    run.status, run.finished_at = "succeeded", now
    # The run ends with a reconciliation of the books as of its day (SPEC §15), recorded in the
    # transaction that marks it succeeded: a run is never succeeded without its record.
    books = reconcile(session, run.run_date, now=now)
    record_reconciliation(session, run_id, books)
    run.summary = json.dumps({"failures": failures, "books_clean": books.clean,
                              "findings": len(books.errors())})
    session.flush()
    return Step("finish", books_clean=books.clean)


def set_batches(session: Session, run_id: int, task: str, ranges: list[tuple[int, int]]) -> None:
    session.execute(update(DailyRunTask).where(DailyRunTask.run_id == run_id, DailyRunTask.task == task)
                    .values(batches=json.dumps(ranges), batches_total=len(ranges)))


def missing_batches(session: Session, run_id: int, task: str) -> list[tuple[int, int, int]]:
    """(batch number, first id, last id) of the task's batches not counted yet."""
    row = session.get(DailyRunTask, (run_id, task))
    if row is None:
        return []
    done = set(session.execute(select(DailyRunBatch.batch_no).where(
        DailyRunBatch.run_id == run_id, DailyRunBatch.task == task)).scalars())
    return [(n, first, last) for n, (first, last) in enumerate(json.loads(row.batches)) if n not in done]


def task_idle_seconds(session: Session, run_id: int, task: str, *, now: datetime) -> float:
    """Seconds since the task last counted a batch (or started): how long it has not moved."""
    row = session.get(DailyRunTask, (run_id, task))
    last_batch = session.execute(select(func.max(DailyRunBatch.done_at)).where(
        DailyRunBatch.run_id == run_id, DailyRunBatch.task == task)).scalar()
    moments = [_aware(m) for m in (last_batch, row.started_at if row is not None else None) if m is not None]
    return (now - max(moments)).total_seconds() if moments else float("inf")


def recorded_batch(session: Session, run_id: int, task: str, batch_no: int) -> tuple[int, int] | None:
    """(first client id, last client id) of batch ``batch_no`` as the run recorded it when the task
    started; None when the task has not started or has no such batch. A batch message is checked
    against it, so a forged or stale message can neither skip a batch nor run one early."""
    row = session.get(DailyRunTask, (run_id, task))
    if row is None or row.status == "pending":
        return None
    ranges = json.loads(row.batches)
    if not 0 <= batch_no < len(ranges):
        return None
    first, last = ranges[batch_no]
    return first, last


def awaits_advance(session: Session, run_id: int, task: str) -> bool:
    """Whether every batch of the run's task is counted but the run has not moved past it yet
    (its ``advance_daily_run`` is under way, or was lost)."""
    row = session.get(DailyRunTask, (run_id, task))
    return row is not None and row.status == "running" and row.batches_done >= row.batches_total


def batch_done(session: Session, run_id: int, task: str, batch_no: int) -> bool:
    found = session.execute(select(DailyRunBatch.batch_no).where(
        DailyRunBatch.run_id == run_id, DailyRunBatch.task == task, DailyRunBatch.batch_no == batch_no)).first()
    return found is not None


def record_batch(session: Session, run_id: int, task: str, batch_no: int, result: TaskResult, *,
                 message_id: str, now: datetime) -> tuple[bool, bool]:
    """Count a finished batch in its task, in the batch's own transaction.

    Returns (counted, task_complete): counted is False if a twin already counted it (the caller
    must then roll back its own copy of the work); task_complete is True for the one batch that
    completes its task. Records failures and moves failure streaks.
    """
    try:
        with session.begin_nested():
            session.execute(insert(DailyRunBatch).values(run_id=run_id, task=task, batch_no=batch_no, done_at=now))
    except IntegrityError:
        return False, False
    [(done, total)] = update_returning(  # UPDATE ... RETURNING, also where the database has none (MySQL)
        session, DailyRunTask, [DailyRunTask.run_id == run_id, DailyRunTask.task == task], dict(
            batches_done=DailyRunTask.batches_done + 1,
            clients=DailyRunTask.clients + result.clients,
            invoices_created=DailyRunTask.invoices_created + result.invoices_created,
            emails_queued=DailyRunTask.emails_queued + result.emails_queued,
            fees_added=DailyRunTask.fees_added + result.fees_added,
            captures=DailyRunTask.captures + result.captures,
            credit_applied=DailyRunTask.credit_applied + result.credit_applied,
            failures=DailyRunTask.failures + len(result.failures)),
        [DailyRunTask.batches_done, DailyRunTask.batches_total])
    record_failures(session, result.failures, actor=task, message_id=message_id, now=now, run_id=run_id,
                    error="Failed")
    note_outcomes(session, result, now=now, run_id=run_id)
    return True, done >= total


def note_outcomes(session: Session, result: TaskResult, *, now: datetime, run_id: int | None = None) -> list[int]:
    """Failure streaks: a failing client's count grows and at ``PARK_AFTER_FAILURES`` it is parked;
    a client that went through the task, and failed no other task of the run, resets its count.
    Returns the clients parked now."""
    failed = sorted({f.client_id for f in result.failures if f.client_id is not None and f.parks})
    if failed:
        session.execute(update(Client).where(among(session, Client.id, failed))
                        .values(failure_count=Client.failure_count + 1))
        reasons = {f.client_id: f.message for f in result.failures}
        parked = list(session.execute(select(Client.id).where(
            among(session, Client.id, failed), Client.failure_count >= PARK_AFTER_FAILURES,
            Client.parked_at.is_(None))).scalars())
        for client_id in parked:
            session.execute(update(Client).where(Client.id == client_id).values(
                parked_at=now, parked_reason=f"{result.task}: {reasons.get(client_id, 'failed')}"[:2000]))
    else:
        parked = []
    ok = result.succeeded_clients - {f.client_id for f in result.failures}
    if ok and run_id is not None:
        from ..models import JobFailure

        ok -= set(session.execute(select(JobFailure.client_id).where(
            JobFailure.run_id == run_id, among(session, JobFailure.client_id, sorted(ok)))).scalars())
    ok = sorted(ok)
    if ok:
        session.execute(update(Client).where(among(session, Client.id, ok), Client.failure_count > 0)
                        .values(failure_count=0))
    return parked


def unpark(session: Session, client_id: int) -> bool:
    """Let the daily run process the client again; True if it was parked."""
    done = session.execute(update(Client).where(Client.id == client_id, Client.parked_at.is_not(None))
                           .values(parked_at=None, parked_reason="", failure_count=0))
    return done.rowcount > 0


def running_runs(session: Session) -> list[int]:
    return list(session.execute(select(DailyRun.id).where(DailyRun.status == "running", DailyRun.dry_run.is_(False))
                                .order_by(DailyRun.id)).scalars())


def last_run_date(session: Session) -> date | None:
    return session.execute(select(func.max(DailyRun.run_date)).where(DailyRun.dry_run.is_(False))).scalar()


def client_failure(client_id: int | None, exc: Exception) -> ClientFailure:
    field = getattr(exc, "field", "")
    value = getattr(exc, "value", None)
    rule = getattr(exc, "rule", None) or f"{type(exc).__name__}: {exc}"
    return ClientFailure(client_id, field, value, rule)




def stalled_runs(session: Session, *, now: datetime, after_seconds: int) -> list[int]:
    """Running runs that have counted no batch and started no task for ``after_seconds``:
    a worker died under them, or a follow-up message was lost. ``advance_daily_run`` resumes them."""
    out = []
    for run_id in running_runs(session):
        last_batch = session.execute(select(func.max(DailyRunBatch.done_at)).where(
            DailyRunBatch.run_id == run_id)).scalar()
        last_start = session.execute(select(func.max(DailyRunTask.started_at)).where(
            DailyRunTask.run_id == run_id)).scalar()
        started = session.get(DailyRun, run_id).started_at
        moments = [_aware(m) for m in (last_batch, last_start, started) if m is not None]
        if (now - max(moments)).total_seconds() >= after_seconds:
            out.append(run_id)
    return out


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    from datetime import UTC

    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def run_time(text: str) -> time:
    """The daily run's local time from the ``daily_run_time`` setting (the rule of settings.py)."""
    hours, minutes = parse_run_time("settings.daily_run_time", text).split(":")
    return time(int(hours), int(minutes))


def run_moment(day: date, at: time, zone: tzinfo) -> datetime:
    """When the run of ``day`` is due (aware, UTC): the first instant of ``day`` at which the
    wall clock of ``zone`` reads ``at`` or later. That is ``at`` itself; its first pass when fall
    back repeats it (01:30 EDT, not 01:30 EST); and, when spring forward skips it, the end of the
    skipped hour (02:30 never happens in New York on 8 March 2026: 03:00 EDT)."""
    wall = datetime.combine(day, at)
    passes = [wall.replace(tzinfo=zone, fold=fold).astimezone(UTC) for fold in (0, 1)]
    real = [moment for moment in passes if _wall(moment, zone) == wall]
    if real:
        return min(real)
    # Skipped: fold=1 reads ``at`` with the offset after the jump (an instant before the gap),
    # fold=0 with the one before it (after the gap). Find the jump, to the second (a zone's
    # transitions fall on whole seconds).
    low, high = int(min(passes).timestamp()), int(max(passes).timestamp())
    while high - low > 1:
        middle = (low + high) // 2
        if _wall(datetime.fromtimestamp(middle, UTC), zone) >= wall:
            high = middle
        else:
            low = middle
    return datetime.fromtimestamp(high, UTC)


def _wall(moment: datetime, zone: tzinfo) -> datetime:
    return moment.astimezone(zone).replace(tzinfo=None)


def scheduled_day(now_local: datetime, at: time) -> date:
    """The day whose run should exist by ``now_local``: today once its run is due (``run_moment``).

    Instants are compared, not wall-clock times: in the hour fall back repeats, 01:10 EST comes
    after 01:30 EDT, so the day's 01:30 run is already due then (a wall-clock comparison would say
    "not yet" and fire a scheduler that missed the first pass an hour late). A naive ``now_local``
    is a wall-clock reading and is compared as one.
    """
    today = now_local.date()
    if now_local.tzinfo is None:
        return today if now_local.time() >= at else today - timedelta(days=1)
    return today if now_local >= run_moment(today, at, now_local.tzinfo) else today - timedelta(days=1)
