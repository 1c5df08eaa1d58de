"""Closing a client (SPEC §12): status Closed, Unpaid invoices Cancelled, every live service,
addon and domain Cancelled, recurring billable items stopped. No server-module command runs:
closing is bookkeeping; an admin who wants the accounts removed from the servers terminates them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ...db import for_update
from ..errors import NotFound
from ..models import (
    Addon,
    BillableItem,
    Client,
    ClientStatus,
    Domain,
    DomainStatus,
    Invoice,
    InvoiceAction,
    InvoiceStatus,
    Service,
    ThingStatus,
)
from ..money import ZERO
from ..payments.credit import change_credit

SOURCE = "job:close_client"
#: Invoices a close cancels. Draft (never sent, nobody owes it), Payment Pending (money on its
#: way through a gateway) and Collections (a debt handed on) are kept: cancelling them would lose
#: money that is still due or arriving.
CANCELLED_INVOICE_STATUSES = (InvoiceStatus.UNPAID,)
#: Statuses a close leaves alone: the thing already ended, or its status is evidence (Fraud).
FINAL_THING_STATUSES = (ThingStatus.TERMINATED, ThingStatus.CANCELLED, ThingStatus.FRAUD)
FINAL_DOMAIN_STATUSES = (DomainStatus.CANCELLED, DomainStatus.FRAUD, DomainStatus.TRANSFERRED_AWAY)


@dataclass(frozen=True)
class ClosingResult:
    client_id: int
    #: The client was Closed before this run (a redelivery, or closed by the admin panel).
    already_closed: bool
    invoices_cancelled: int
    services_cancelled: int
    addons_cancelled: int
    domains_cancelled: int
    billable_items_stopped: int
    #: Credit that had been applied to the cancelled invoices, given back to the balance.
    credit_returned: Decimal

    def as_dict(self) -> dict:
        return {"client_id": self.client_id, "already_closed": self.already_closed,
                "invoices_cancelled": self.invoices_cancelled, "services_cancelled": self.services_cancelled,
                "addons_cancelled": self.addons_cancelled, "domains_cancelled": self.domains_cancelled,
                "billable_items_stopped": self.billable_items_stopped, "credit_returned": str(self.credit_returned)}


def close_client(session: Session, client_id: int, *, as_of: date) -> ClosingResult:
    """Close the client. Locks the client row, then its Unpaid invoices (by id), like every
    billing job, so a concurrent invoice run either finishes first (its invoice is cancelled
    here) or waits and then skips the Closed client.

    Idempotent: a second run finds nothing left to change and reports zeros. Raises ``NotFound``
    for an unknown client. The caller commits.
    """
    status = session.execute(for_update(select(Client.status).where(Client.id == client_id))).scalar()
    if status is None:
        raise NotFound("client_id", client_id, "client")
    already_closed = status == ClientStatus.CLOSED
    if not already_closed:
        session.execute(update(Client).where(Client.id == client_id).values(status=ClientStatus.CLOSED))
    invoices_cancelled, credit_returned = _cancel_unpaid_invoices(session, client_id, as_of)
    things = {}
    for model, final in ((Service, FINAL_THING_STATUSES), (Addon, FINAL_THING_STATUSES),
                         (Domain, FINAL_DOMAIN_STATUSES)):
        things[model] = session.execute(
            update(model).where(model.client_id == client_id, model.status.not_in(final))
            .values(status=ThingStatus.CANCELLED)).rowcount
    # A billable item has no status: "don't invoice" is how it stops recurring. Its other fields
    # (recur_every, invoice_count...) are kept, so the record still says what it was.
    stopped = session.execute(
        update(BillableItem).where(BillableItem.client_id == client_id,
                                   BillableItem.invoice_action != InvoiceAction.DONT_INVOICE)
        .values(invoice_action=InvoiceAction.DONT_INVOICE)).rowcount
    return ClosingResult(client_id, already_closed, invoices_cancelled, things[Service], things[Addon],
                         things[Domain], stopped, credit_returned)


def _cancel_unpaid_invoices(session: Session, client_id: int, as_of: date) -> tuple[int, Decimal]:
    """Cancel the client's Unpaid invoices; credit applied to them goes back to the balance
    (with a credit-history line each), since the invoice it paid for is no longer owed.
    Payments already recorded on them stay: refunding is an admin's decision."""
    invoices = session.execute(for_update(
        select(Invoice).where(Invoice.client_id == client_id, Invoice.status.in_(CANCELLED_INVOICE_STATUSES))
        .order_by(Invoice.id))).scalars().all()
    returned = ZERO
    for invoice in invoices:
        credit = Decimal(invoice.credit_applied)
        if credit > 0:
            name = f"#{invoice.number}" if invoice.number is not None else f"id {invoice.id}"
            change_credit(session, client_id, credit, f"Credit returned from cancelled Invoice {name}",
                          as_of=as_of, invoice_id=invoice.id, source=SOURCE)
            invoice.credit_applied = ZERO
            invoice.balance_due = max(Decimal(invoice.total) - Decimal(invoice.amount_paid), ZERO)
            returned += credit
        invoice.status = InvoiceStatus.CANCELLED
    session.flush()
    return len(invoices), returned
