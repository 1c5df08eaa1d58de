"""Generate due invoices (SPEC §4) for a batch of clients, in the caller's transaction.

Guarantees: a thing is invoiced at most once per due date (client row locks serialise workers;
the ``billed_periods`` primary key is the final guard) and at most once per billing day
(``as_of``): running a day twice, in sequence or at once, bills what running it once bills
(``billed_periods.billed_on`` and its unique index; see ``due_things``). Invoice numbers are
gap-free; the invoice, its billed periods, the thing's ``next_invoice_date``, the credit spent and the
outbox email are written together or not at all. One client that cannot be invoiced is recorded
as a failure and never stops the others; a billed period refused because another worker billed it
first is "already billed", not a failure.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from ...store.bulk import update_rows
from ...store.conflicts import is_transient
from ..errors import ValidationError
from ..failures import ClientFailure
from ..messaging.outbox import QueuedEmail, queue_emails
from ..models import Client, ClientStatus, InvoiceStatus
from ..payments.payments import settle_paid_invoices
from ..settings import BillingSettings, load_settings
from .due_things import THING_TABLES, DueThings, find_due
from .invoice_plan import ClientInfo, InvoicePlan, TaxContext, plan_invoices
from .invoice_store import (
    WrittenInvoice,
    is_billed_period_clash,
    lock_clients,
    write_invoice_rows,
    write_items_and_periods,
)
from .tax import TaxRules

log = logging.getLogger(__name__)

SOURCE = "job:generate_due_invoices"


@dataclass
class GenerationResult:
    as_of: date
    clients_processed: int = 0
    invoices_created: int = 0
    items_invoiced: int = 0
    invoice_ids: list[int] = field(default_factory=list)
    email_ids: list[int] = field(default_factory=list)
    failures: list[ClientFailure] = field(default_factory=list)
    #: The planned invoices (always filled; a dry run stops here).
    plans: list[InvoicePlan] = field(default_factory=list)

    @property
    def emails_queued(self) -> int:
        return len(self.email_ids)


def client_batches(session: Session, batch_size: int = 500) -> Iterator[list[int]]:
    """Ids of the clients that may be billed, ``batch_size`` at a time (keyset pagination, so
    memory stays flat however many clients there are)."""
    after = 0
    while True:
        ids = list(session.execute(
            select(Client.id).where(Client.id > after, Client.status != ClientStatus.CLOSED)
            .order_by(Client.id).limit(batch_size)).scalars())
        if not ids:
            return
        yield ids
        after = ids[-1]


def tax_context(rules: TaxRules, client: ClientInfo, settings: BillingSettings) -> TaxContext:
    rate1, rate2 = rules.rates_for(client.country, client.state, exempt=client.tax_exempt)
    return TaxContext(rate1, rate2, inclusive=settings.tax_type == "inclusive", compound=settings.tax_l2_compound)


def billable_clients(clients: dict[int, ClientInfo], client_ids: Sequence[int],
                     result: GenerationResult) -> list[ClientInfo]:
    """Clients that can be invoiced; the others are recorded in ``result.failures`` or skipped."""
    out = []
    for cid in client_ids:
        client = clients.get(cid)
        if client is None or client.status == ClientStatus.CLOSED:
            continue  # deleted or closed since the batch was made: nothing to bill
        if client.currency_id is None:
            result.failures.append(ClientFailure(cid, "currency_id", None,
                                                 "is required to invoice: the client has no currency"))
            continue
        out.append(client)
    return out


def generate_for_clients(
    session: Session,
    client_ids: Sequence[int],
    as_of: date,
    *,
    queue_email: bool = True,
    dry_run: bool = False,
) -> GenerationResult:
    """Invoice everything due on ``as_of`` for ``client_ids``; the caller commits.

    Idempotent per billing day: a second call for the same ``as_of`` (same batch again, another
    fan-out, a concurrent worker) bills nothing the first call billed or would have billed.
    Locks the clients' rows. With ``dry_run`` the same plans are made and returned, nothing is
    written (the operator's preview shares the real run's code path).
    """
    result = GenerationResult(as_of)
    settings = load_settings(session)
    rules = TaxRules.load(session)
    clients = billable_clients(lock_clients(session, client_ids), client_ids, result)
    result.clients_processed = len(clients)
    due = find_due(session, [c.id for c in clients], as_of, settings)
    plans = _plan(clients, due, as_of, settings, rules, result)
    result.plans = plans
    if dry_run or not plans:
        return result
    try:
        with session.begin_nested():
            write_plans(session, plans, due, result, queue_email=queue_email)
    except (IntegrityError, DBAPIError) as exc:
        if not isinstance(exc, IntegrityError) and (exc.connection_invalidated or is_transient(exc)):
            raise  # a deadlock or lock wait timeout: the whole transaction is to be run again
        # Someone else billed part of this batch (another application, a race we did not
        # expect). Redo it client by client, so the clash costs one client, not the batch;
        # a client billed meanwhile is "already billed" there, not a failure.
        log.warning("batch write failed (%s); retrying client by client", exc.__class__.__name__)
        failed = {failure.client_id for failure in result.failures}  # (already failed in planning)
        for client in clients:
            if client.id not in failed:
                _generate_one(session, client, as_of, settings, rules, result, queue_email=queue_email)
    return result


def _plan(clients: Sequence[ClientInfo], due: DueThings, as_of: date, settings: BillingSettings,
          rules: TaxRules, result: GenerationResult) -> list[InvoicePlan]:
    plans: list[InvoicePlan] = []
    for client in clients:
        lines = due.items.get(client.id)
        if lines:
            try:
                plans += plan_invoices(client, lines, as_of=as_of, tax=tax_context(rules, client, settings),
                                       separate=client.separate_invoices,
                                       auto_apply_credit=settings.auto_apply_credit)
            except ValidationError as exc:  # a total beyond what the books hold: this client's data
                result.failures.append(ClientFailure(client.id, "", None, f"could not be invoiced: {exc}"))
    return plans


#: Looks at one client after its batch clashed: the first on a fresh read, the second after a
#: billed-period clash (the other writer has committed by then, so its billed periods are seen).
CLIENT_ATTEMPTS = 2


def _generate_one(session: Session, client: ClientInfo, as_of: date, settings: BillingSettings,
                  rules: TaxRules, result: GenerationResult, *, queue_email: bool) -> None:
    """One client in its own savepoint. A ``billed_periods`` clash means another writer billed
    this client meanwhile: look again, and if it still clashes count it as already billed (no
    failure, so a race never parks a client). Any other database error is a failure."""
    for _ in range(CLIENT_ATTEMPTS):
        try:
            with session.begin_nested():
                due = find_due(session, [client.id], as_of, settings)
                plans = _plan([client], due, as_of, settings, rules, result)
                if plans:
                    write_plans(session, plans, due, result, queue_email=queue_email)
            return
        except (IntegrityError, DBAPIError) as exc:
            if not isinstance(exc, IntegrityError) and (exc.connection_invalidated or is_transient(exc)):
                raise  # transient: retried, never a failed client
            if not (isinstance(exc, IntegrityError) and is_billed_period_clash(exc)):
                result.failures.append(ClientFailure(client.id, "", None, f"could not be invoiced: {exc.orig}"))
                return
            clash = exc
    log.info("client %s already billed for %s by another writer (%s)", client.id, as_of, clash.orig)


def write_plans(session: Session, plans: list[InvoicePlan], due: DueThings, result: GenerationResult, *,
           queue_email: bool) -> list[WrittenInvoice]:
    periods = {c for p in plans for c in p.billed_periods}
    stored = write_items_and_periods(session, plans, cancelled_periods=sorted(due.cancelled_periods & periods),
                                     billed_on=due.billed_on)
    write_thing_updates(session, [due.updates[ln.key] for p in plans for ln in p.items if ln.key in due.updates])
    email_ids = []
    if queue_email:
        email_ids = queue_emails(session, [
            QueuedEmail("invoice_created", s.plan.client_id, {"invoice_id": s.id}, f"invoice_created:{s.id}")
            for s in stored])
    write_invoice_rows(session, stored, source=SOURCE)
    paid = [s.id for s in stored if s.plan.status == InvoiceStatus.PAID]
    if paid:
        settle_paid_invoices(session, paid)
    result.invoices_created += len(stored)
    result.items_invoiced += sum(len(s.plan.items) for s in stored)
    result.invoice_ids += [s.id for s in stored]
    result.email_ids += email_ids
    return stored


def write_thing_updates(session: Session, updates) -> None:
    """Advance ``next_invoice_date`` (or a billable item's count) of every invoiced thing."""
    shapes: dict[tuple[str, tuple[str, ...]], list[dict]] = {}
    for u in updates:
        shapes.setdefault((u.item_type, tuple(sorted(u.values))), []).append({"id": u.item_id, **u.values})
    for (item_type, _), rows in shapes.items():
        update_rows(session, THING_TABLES[item_type].__table__, rows)
