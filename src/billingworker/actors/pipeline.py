"""One batch pipeline for every job over many clients.

The daily run (``run_daily_batch``), the standalone jobs over every client
(``generate_due_invoices``, ``send_overdue_reminders``, ``apply_late_fees``,
``capture_due_payments``, through ``run_task_batch``) and the dry run all go the same way:

1. **fan out**: the clients in ranges of ids (``daily_run.batch_ranges``), one message per range;
2. **which clients**: a range holds its clients that are neither Closed nor parked
   (``tasks.eligible_clients``); a job that names one client runs for it even if parked;
3. **isolate**: a task runs over the batch at once, and if that fails, client by client, so one
   client's bad data costs that client only (``isolated``);
4. **keep**: in the transaction that keeps the work, the caller records it (the failures, the
   run's batch count) and holds the follow-ups (emails' delivery, the next step) for the commit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import date
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from ..db import session_factory
from ..domain.runs import daily_run
from ..domain.runs.tasks import TASKS, DailyTask
from ..domain.tasks import TaskResult
from ..runtime import runtime
from ..store.conflicts import is_transient
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

#: ``keep(work, result) -> bool``: record ``result`` in ``work`` (failures, counts, the messages
#: to send after the commit) and say whether the work is to be committed.
Keep = Callable[[UnitOfWork, TaskResult], bool]


def run_task(task_name: str, client_ids: Sequence[int], day: date, keep: Keep, **options: Any) -> TaskResult:
    """Run the task over ``client_ids`` for ``day``, then ``keep`` it (see the module's step 4).

    A task with its own transactions (capture: it commits before calling the gateway) has
    kept its work already; ``keep`` then records it in a transaction of its own. ``options``
    go to the task's function (``queue_email`` for generation).
    """
    task = TASKS[task_name]
    rt = runtime()
    if task.own_transactions:
        result = task.run(session_factory(rt.engine), list(client_ids), day, gateway_for=rt.gateway_for,
                          now=rt.clock.now(), **options)
        with UnitOfWork(rt.engine) as work:
            if keep(work, result):
                work.commit()
        return result
    with UnitOfWork(rt.engine) as work:
        result = isolated(task, work.session, client_ids, day, **options)
        if keep(work, result):
            work.commit()
    return result


def isolated(task: DailyTask, session: Session, client_ids: Sequence[int], day: date, **options: Any) -> TaskResult:
    """The task over the batch; if it fails as a whole, client by client, so that one client's
    bad data costs that client, not the batch (SPEC: one bad client never stops the run). A
    lost connection, a deadlock or a lock wait timeout is not a client's fault: it fails the
    batch (the database rolled the whole transaction back), which Dramatiq retries."""
    ids = list(client_ids)
    try:
        with session.begin_nested():
            return task.run(session, ids, day, **options)
    except DBAPIError as exc:
        if exc.connection_invalidated or is_transient(exc):
            raise
        whole: Exception = exc
    except Exception as exc:  # noqa: BLE001 - isolate below, then record
        whole = exc
    log.warning("task %s failed for a batch of %d clients (%s); retrying client by client", task.name, len(ids), whole)
    result = TaskResult(task=task.name)
    for client_id in ids:
        try:
            with session.begin_nested():
                result.merge(task.run(session, [client_id], day, **options))
        except DBAPIError as exc:
            if exc.connection_invalidated or is_transient(exc):
                raise
            result.failures.append(daily_run.client_failure(client_id, exc))
        except Exception as exc:  # noqa: BLE001 - recorded for the operator
            result.failures.append(daily_run.client_failure(client_id, exc))
    return result


def counts(result: TaskResult) -> dict:
    """What a job returns (and logs) of a task's result."""
    return {"clients": result.clients, "invoices": result.invoices_created, "fees": result.fees_added,
            "captures": result.captures, "credit_applied": result.credit_applied, "emails": result.emails_queued,
            "failures": len(result.failures), "amount": str(result.amount)}
