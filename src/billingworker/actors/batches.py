"""The standalone jobs over every client, on the one batch pipeline (``pipeline.py``).

``generate_due_invoices`` and the collection jobs (``send_overdue_reminders``,
``apply_late_fees``, ``capture_due_payments``) without a ``client_id`` fan out here: one
``run_task_batch`` per range of client ids, each running the daily run's own task over the
range's clients that are neither Closed nor parked, its failures recorded against the job.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta
from typing import Any

from ..domain.errors import NotFound, ValidationError
from ..domain.failures import record_failures
from ..domain.models import Client
from ..domain.runs import daily_run
from ..domain.runs.tasks import TASK_NAMES, eligible_clients
from ..domain.tasks import TaskResult
from ..runtime import runtime
from . import pipeline
from .arguments import argument_rules, parse_bool, parse_date, parse_id, parse_optional_id
from .base import current_message_id, job
from .emails import delivery_messages
from .unit_of_work import UnitOfWork


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


def fan_out(task: str, day: date, **options: Any) -> dict:
    """A standalone job over every client: one ``run_task_batch`` per range of client ids, sent
    once the ranges are read (the day is fixed now, so a batch retried after midnight works on
    the same day)."""
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        ranges = daily_run.batch_ranges(work.session, rt.batch_size)
        work.send_after_commit(*(run_task_batch.message(task=task, first_client_id=first, last_client_id=last,
                                                        as_of=day.isoformat(), **options) for first, last in ranges))
        work.commit()
    return {"batches": len(ranges), "as_of": day.isoformat()}


def run_for_clients(task: str, ids: Sequence[int], day: date, **options: Any) -> TaskResult:
    """A standalone job's task over ``ids``: its failures recorded against the job (a failing
    client costs that client only), its emails' delivery sent after the commit."""
    rt = runtime()

    def record(work: UnitOfWork, result: TaskResult) -> bool:
        record_failures(work.session, result.failures, actor=task, message_id=current_message_id(),
                        now=rt.clock.now(), error="Failed")
        work.send_after_commit(*delivery_messages(result.email_ids))
        return True

    return pipeline.run_task(task, ids, day, record, **options)


def collection_job(task: str, client_id, as_of) -> dict:
    client_id = parse_optional_id("client_id", client_id)
    day = collection_day(as_of)
    if client_id is None:
        return fan_out(task, day)
    with UnitOfWork() as work:
        if work.session.get(Client, client_id) is None:
            raise NotFound("client_id", client_id, "client")
    return pipeline.counts(run_for_clients(task, [client_id], day))


@job(calls_outside=True)
@argument_rules(first_client_id=parse_id, last_client_id=parse_id, as_of=parse_date, send_email=parse_bool)
def run_task_batch(task, first_client_id, last_client_id, as_of, send_email=True):
    """One batch of a standalone job's fan-out (internal; see docs/jobs.md): the task over the
    range's clients that are neither Closed nor parked."""
    if task not in TASK_NAMES:
        raise ValidationError("task", task, f"is not one of {', '.join(TASK_NAMES)}")
    first, last = parse_id("first_client_id", first_client_id), parse_id("last_client_id", last_client_id)
    if as_of is None:
        raise ValidationError("as_of", as_of, "is required for a batch")
    options: dict[str, Any] = {}
    if task == "generate_due_invoices":
        day = parse_date("as_of", as_of)
        options["queue_email"] = parse_bool("send_email", send_email)
    else:
        day = collection_day(as_of)
        if send_email is not True:
            raise ValidationError("send_email", send_email, f"is for generate_due_invoices only: {task} always "
                                  "writes its emails")
    with UnitOfWork() as work:
        ids = eligible_clients(work.session, first, last)
    return pipeline.counts(run_for_clients(task, ids, day, **options))
