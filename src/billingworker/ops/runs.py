"""What the database says about the daily runs: the last runs and their counts, their failures,
the parked clients. Read-only; every function takes a Session and leaves it unchanged.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ..clock import as_utc
from ..domain.failures import MAX_REASON_LENGTH
from ..domain.models import Client, DailyRun, DailyRunTask, JobFailure
from ..domain.redaction import mask_text
from ..store.ordering import nulls_last

#: The counters of a daily run task (``daily_run_tasks``), in the order a screen shows them.
TASK_COUNTS = ("clients", "invoices_created", "emails_queued", "fees_added", "captures", "credit_applied",
               "failures")


@dataclass(frozen=True)
class TaskView:
    task: str
    status: str
    batches_done: int
    batches_total: int
    counts: dict[str, int]


@dataclass(frozen=True)
class RunView:
    id: int
    run_date: str
    dry_run: bool
    status: str
    trigger: str
    started_at: datetime | None
    finished_at: datetime | None
    #: Rows of ``job_failures`` written during this run.
    failures: int
    tasks: list[TaskView] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["started_at"] = _iso(self.started_at)
        data["finished_at"] = _iso(self.finished_at)
        return data


@dataclass(frozen=True)
class ParkedClient:
    id: int
    name: str
    parked_at: datetime | None
    reason: str
    failure_count: int

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "parked_at": _iso(self.parked_at)}


def _iso(moment: datetime | None) -> str | None:
    moment = as_utc(moment)
    return moment.isoformat() if moment else None


def last_runs(session: Session, limit: int = 5, *, include_dry: bool = True) -> list[RunView]:
    """The ``limit`` most recent daily runs, newest first, with their tasks and failure counts."""
    stmt = select(DailyRun).order_by(DailyRun.started_at.desc(), DailyRun.id.desc()).limit(limit)
    if not include_dry:
        stmt = stmt.where(DailyRun.dry_run.is_(False))
    return run_views(session, list(session.execute(stmt).scalars()))


def run_views(session: Session, runs: list[DailyRun]) -> list[RunView]:
    if not runs:
        return []
    ids = [r.id for r in runs]
    tasks: dict[int, list[TaskView]] = {i: [] for i in ids}
    for t in session.execute(select(DailyRunTask).where(DailyRunTask.run_id.in_(ids))
                             .order_by(DailyRunTask.run_id, DailyRunTask.position)).scalars():
        tasks[t.run_id].append(TaskView(t.task, t.status, t.batches_done, t.batches_total,
                                        {name: getattr(t, name) for name in TASK_COUNTS}))
    failures = dict(session.execute(select(JobFailure.run_id, func.count()).where(JobFailure.run_id.in_(ids))
                                    .group_by(JobFailure.run_id)).all())
    return [RunView(r.id, r.run_date.isoformat(), r.dry_run, r.status, r.trigger, as_utc(r.started_at),
                    as_utc(r.finished_at), failures.get(r.id, 0), tasks[r.id]) for r in runs]


def last_real_run(session: Session) -> RunView | None:
    """The most recent run that is not a dry run, or None."""
    runs = last_runs(session, 1, include_dry=False)
    return runs[0] if runs else None


def last_succeeded_run(session: Session) -> RunView | None:
    """The most recent real run that succeeded, or None."""
    run = session.execute(select(DailyRun).where(DailyRun.dry_run.is_(False), DailyRun.status == "succeeded")
                          .order_by(*nulls_last(session, DailyRun.finished_at, descending=True), DailyRun.id.desc())
                          .limit(1)).scalar()
    return run_views(session, [run])[0] if run is not None else None


def parked_clients(session: Session, limit: int = 100) -> list[ParkedClient]:
    """Clients the daily run skips until an operator unparks them, most recently parked first."""
    rows = session.execute(select(Client).where(Client.parked_at.is_not(None))
                           .order_by(Client.parked_at.desc(), Client.id).limit(limit)).scalars()
    return [ParkedClient(c.id, client_name(c), as_utc(c.parked_at), c.parked_reason, c.failure_count) for c in rows]


def count_parked(session: Session) -> int:
    return session.execute(select(func.count()).select_from(Client).where(Client.parked_at.is_not(None))).scalar_one()


def client_name(client: Client) -> str:
    person = f"{client.first_name} {client.last_name}".strip()
    if client.company_name:
        return f"{client.company_name} ({person})" if person else client.company_name
    return person or client.email


def failure_reasons(session: Session, message_ids: list[str]) -> dict[str, str]:
    """The latest ``job_failures`` reason per message id (why a refused message was dead-lettered)."""
    ids = [m for m in message_ids if m]
    if not ids:
        return {}
    rows = session.execute(select(JobFailure.message_id, JobFailure.error, JobFailure.field, JobFailure.reason)
                           .where(JobFailure.message_id.in_(ids)).order_by(JobFailure.id)).all()
    return {m: f"{error}: {field + ' ' if field else ''}{reason}" for m, error, field, reason in rows}


def failures_by_message(session: Session, message_ids: list[str]) -> dict[str, list[dict[str, Any]]]:
    """The ``job_failures`` rows of each message id, oldest first: error, field, reason (masked
    and bounded again: rows older than the masking rules hold what they held), client. What
    refused a dead letter, or failed a batch of a retried one."""
    ids = [m for m in message_ids if m]
    if not ids:
        return {}
    out: dict[str, list[dict[str, Any]]] = {}
    for row in session.execute(select(JobFailure).where(JobFailure.message_id.in_(ids)).order_by(JobFailure.id)
                               ).scalars():
        out.setdefault(row.message_id, []).append(
            {"error": mask_text(row.error), "field": mask_text(row.field or ""),
             "reason": mask_text(row.reason or "", MAX_REASON_LENGTH), "client_id": row.client_id,
             "created_at": _iso(row.created_at)})
    return out


def failure_text(failure: dict[str, Any]) -> str:
    """``Error: field reason`` of a ``failures_by_message`` row, the field said once (the
    reason of a refusal usually starts with it already)."""
    name = failure.get("field") or ""
    reason = str(failure.get("reason") or "")
    said = name and not reason.startswith(name)
    return f"{failure.get('error')}: {name + ' ' if said else ''}{reason}".strip()
