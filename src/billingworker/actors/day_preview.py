"""A whole-day preview that sees itself: the daily run's real code, chained, then rolled back.

Each task previewed on the database as it is would miss what the tasks before it do: the
reminders would ignore the invoices the same run creates, the captures the credit it applies.
So the preview runs the tasks as the run does, in order and for real (``dry_run=False``), batch
by batch, inside one outer transaction per batch that is rolled back at the end:

- every session of the batch, the capture task's own included, joins that transaction through
  savepoints (``join_transaction_mode="create_savepoint"``): their commits commit nothing;
- the payment gateways are replaced by ``PreviewGateway``, which approves without charging and
  is never the real one (a card whose gateway the worker could not use still fails, as it
  would in the run);
- no message is sent: the tasks return the emails they queued, and nothing delivers them.

The row locks of a batch (its clients, their invoices) are held while its tasks run and
released by the rollback, so a preview delays a real job on the same clients by one batch at
most. The invoice-number sequence is never locked: a preview session numbers its invoices -1,
-2, ... (``invoice_store.PREVIEW_SESSION``), so no other client's job waits for a preview. Ids
taken from database sequences (PostgreSQL's SERIAL) are spent.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date

from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker

from ..domain.billing.invoice_store import PREVIEW_SESSION
from ..domain.ports import (
    CaptureRequest,
    CaptureResult,
    PaymentGateway,
    PayMethodDeletionRequest,
    PayMethodDeletionResult,
)
from ..domain.runs import daily_run
from ..domain.runs.tasks import DAILY_TASKS, eligible_clients
from ..domain.tasks import TaskResult
from ..runtime import runtime
from . import pipeline


@dataclass(frozen=True)
class PreviewGateway:
    """A payment gateway for a preview: every capture "succeeds", nothing is charged or called."""

    name: str

    def capture(self, request: CaptureRequest) -> CaptureResult:
        return CaptureResult("succeeded", f"preview-{request.idempotency_key}", "preview: nothing was charged")

    def delete_pay_method(self, request: PayMethodDeletionRequest) -> PayMethodDeletionResult:
        raise RuntimeError("a preview never deletes a pay method")


def preview_gateways(gateway_for: Callable[[str], PaymentGateway]) -> Callable[[str], PaymentGateway]:
    """``gateway_for`` as the run would see it (an unknown or switched-off gateway still fails),
    answering with ``PreviewGateway`` instead of the gateway itself."""

    def look_up(name: str) -> PaymentGateway:
        gateway_for(name)  # raises as the run would; the gateway found is never used
        return PreviewGateway(name)

    return look_up


def preview_day(day: date, *, engine: Engine | None = None) -> dict[str, TaskResult]:
    """What the day's run would do, task by task, each task seeing what the ones before it did
    (the module docstring tells how). Nothing is written, no gateway is called, nothing is sent.
    ``engine``: the database to preview (default the runtime's; the web console passes its own)."""
    rt = runtime()
    engine = engine or rt.engine
    gateways = preview_gateways(rt.gateway_for)
    report = {task.name: TaskResult(task=task.name) for task in DAILY_TASKS}
    with engine.connect() as connection:
        sessions = sessionmaker(bind=connection, join_transaction_mode="create_savepoint",
                                expire_on_commit=False, autoflush=False, info={PREVIEW_SESSION: True})
        with connection.begin() as reading, sessions() as session:
            ranges = daily_run.batch_ranges(session, rt.batch_size)
            reading.rollback()
        for first, last in ranges:
            with connection.begin() as batch:
                try:
                    _preview_batch(sessions, first, last, day, gateways, report, now=rt.clock.now())
                finally:
                    batch.rollback()
    return report


def _preview_batch(sessions: sessionmaker, first: int, last: int, day: date,
                   gateways: Callable[[str], PaymentGateway], report: dict[str, TaskResult], *, now) -> None:
    session = sessions()
    try:
        ids = eligible_clients(session, first, last)
        for task in DAILY_TASKS:
            if task.own_transactions:
                result = task.run(sessions, ids, day, gateway_for=gateways, now=now)
            else:
                result = pipeline.isolated(task, session, ids, day)
                session.commit()  # a savepoint of the batch's transaction: the next task sees it
            report[task.name].merge(result)
    finally:
        session.close()
