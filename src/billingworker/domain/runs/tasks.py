"""The daily run's tasks, in order (SPEC §15): each task's name and batch function, and which
clients a batch holds. One table, read by the daily run, by the standalone jobs
(``send_overdue_reminders``...) and by the dry run alike.

Every batch function has the shape documented in ``domain/tasks.py``, in the caller's
transaction; capture alone opens its own transactions (it commits before it calls the gateway,
``own_transactions``) and takes a session factory, the gateway look-up and the time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...store.arrays import among
from ..billing.due_invoices import generate_for_clients
from ..billing.invoice_store import lock_clients
from ..collections.late_fees import apply_late_fees_for_clients
from ..collections.reminders import send_overdue_reminders_for_clients
from ..models import Client, ClientStatus, Invoice, InvoiceKind, InvoiceStatus
from ..money import ZERO
from ..payments.captures import capture_due_payments_for_clients
from ..payments.payments import apply_credit_to_invoice
from ..settings import load_settings
from ..tasks import TaskResult


@dataclass(frozen=True)
class DailyTask:
    name: str
    #: The batch function: ``run(session, client_ids, as_of, *, dry_run=False) -> TaskResult``,
    #: or for ``own_transactions``: ``run(session_factory, client_ids, as_of, *, gateway_for, now, dry_run=False)``.
    run: Callable[..., TaskResult]
    own_transactions: bool = False


def generate_due_invoices_for_clients(session: Session, client_ids: Sequence[int], as_of: date, *,
                                      dry_run: bool = False, queue_email: bool = True) -> TaskResult:
    """Invoice what is due (the billing core); ``queue_email=False`` writes no invoice emails."""
    result = generate_for_clients(session, client_ids, as_of, dry_run=dry_run, queue_email=queue_email)
    failed = {f.client_id for f in result.failures}
    plans = result.plans
    return TaskResult(
        task="generate_due_invoices", clients=result.clients_processed,
        invoices_created=len(plans) if dry_run else result.invoices_created,
        amount=sum((p.totals.total for p in plans), ZERO), email_ids=result.email_ids,
        failures=result.failures, succeeded_clients=set(client_ids) - failed,
        # Also when written: the whole-day preview runs the real code and reads these lines.
        preview=[{"client_id": p.client_id, "due": p.date_due.isoformat(), "lines": len(p.items),
                  "total": str(p.totals.total), "status": p.status} for p in plans],
    )


def apply_credit_for_clients(session: Session, client_ids: Sequence[int], as_of: date, *,
                             dry_run: bool = False) -> TaskResult:
    """Apply credit to the day's new invoices that still owe something (SPEC §4, §15).

    Credit is applied when an invoice is generated; this catches the invoices created today by
    other paths (the order form, an admin) before the credit reached them. Older invoices are
    left alone: credit added later waits for the next invoice or a manual application.
    """
    result = TaskResult(task="apply_credit")
    if not load_settings(session).auto_apply_credit:
        return result
    clients = lock_clients(session, client_ids)
    with_credit = [c.id for c in clients.values() if c.credit_balance > 0 and c.status != ClientStatus.CLOSED]
    result.clients = len(clients)
    result.succeeded_clients = set(clients)
    if not with_credit:
        return result
    invoices = session.execute(
        select(Invoice.id, Invoice.client_id, Invoice.balance_due)
        .where(among(session, Invoice.client_id, with_credit), Invoice.status == InvoiceStatus.UNPAID,
               Invoice.kind == InvoiceKind.STANDARD, Invoice.date_created == as_of, Invoice.balance_due > 0)
        .order_by(Invoice.client_id, Invoice.date_due, Invoice.id)).all()
    balance = {c: clients[c].credit_balance for c in with_credit}
    for inv in invoices:
        if balance[inv.client_id] <= 0:
            continue
        if dry_run:
            take = min(balance[inv.client_id], inv.balance_due)
            balance[inv.client_id] -= take
            result.preview.append({"client_id": inv.client_id, "invoice_id": inv.id, "credit": str(take)})
            result.credit_applied += 1
            result.amount += take
            continue
        applied = apply_credit_to_invoice(session, inv.id, as_of=as_of, source="job:run_daily_automation")
        if applied.applied > 0:
            result.preview.append({"client_id": inv.client_id, "invoice_id": inv.id, "credit": str(applied.applied)})
            balance[inv.client_id] -= applied.applied
            result.credit_applied += 1
            result.amount += applied.applied
    return result


def eligible_clients(session: Session, first_id: int, last_id: int) -> list[int]:
    """The clients of a batch range that a job over every client processes: not Closed, not
    parked (a parked client waits for the operator's ``unpark``; a job naming it still runs)."""
    return list(session.execute(
        select(Client.id).where(Client.id >= first_id, Client.id <= last_id, Client.status != ClientStatus.CLOSED,
                                Client.parked_at.is_(None)).order_by(Client.id)).scalars())


#: The daily run's tasks in the order it performs them.
DAILY_TASKS: tuple[DailyTask, ...] = (
    DailyTask("generate_due_invoices", generate_due_invoices_for_clients),
    DailyTask("apply_credit", apply_credit_for_clients),
    DailyTask("capture_due_payments", capture_due_payments_for_clients, own_transactions=True),
    DailyTask("apply_late_fees", apply_late_fees_for_clients),
    DailyTask("send_overdue_reminders", send_overdue_reminders_for_clients),
)
TASKS: dict[str, DailyTask] = {task.name: task for task in DAILY_TASKS}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)
