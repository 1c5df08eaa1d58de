"""Daily-run tasks built on the billing core: generate due invoices and apply credit, in the
batch-function shape of ``tasks.py``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...store.arrays import among
from ..billing.due_invoices import generate_for_clients
from ..billing.invoice_store import lock_clients
from ..models import Client, ClientStatus, Invoice, InvoiceKind, InvoiceStatus
from ..money import ZERO
from ..payments.payments import apply_credit_to_invoice
from ..settings import load_settings
from ..tasks import TaskResult


def generate_task(session: Session, client_ids: Sequence[int], as_of: date, *, dry_run: bool = False) -> TaskResult:
    result = generate_for_clients(session, client_ids, as_of, dry_run=dry_run)
    failed = {f.client_id for f in result.failures}
    plans = result.plans
    return TaskResult(
        task="generate_due_invoices", clients=result.clients_processed,
        invoices_created=len(plans) if dry_run else result.invoices_created,
        amount=sum((p.totals.total for p in plans), ZERO), email_ids=result.email_ids,
        failures=result.failures, succeeded_clients=set(client_ids) - failed,
        preview=[{"client_id": p.client_id, "due": p.date_due.isoformat(), "lines": len(p.items),
                  "total": str(p.totals.total), "status": p.status} for p in plans] if dry_run else [],
    )


def apply_credit_task(session: Session, client_ids: Sequence[int], as_of: date, *,
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
            balance[inv.client_id] -= applied.applied
            result.credit_applied += 1
            result.amount += applied.applied
    return result


def eligible_clients(session: Session, first_id: int, last_id: int) -> list[int]:
    """Clients of a batch range that the daily run processes: not Closed, not parked."""
    return list(session.execute(
        select(Client.id).where(Client.id >= first_id, Client.id <= last_id, Client.status != ClientStatus.CLOSED,
                                Client.parked_at.is_(None)).order_by(Client.id)).scalars())
