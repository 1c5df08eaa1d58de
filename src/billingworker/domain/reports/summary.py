"""The client summary (SPEC §13): invoices per status, income, counts, recent emails.

- **Invoices**: every status (Draft, Unpaid, Paid, Cancelled, Refunded, Collections, Payment
  Pending), with its count and the sum of its totals; for Unpaid the sum of what is still due
  (``balance_due``), as the admin's screen shows it. Add-funds invoices are invoices like the others.
- **Income**, from the client's transactions: gross revenue = Σ amount in; client expenses =
  Σ fees + Σ amount out (refunds); net income = gross revenue − client expenses. Plus the
  credit balance.
- **Counts**: services and addons (Active and total), domains (Active and total), quotes,
  tickets, affiliates (the client's affiliate accounts: 0 or 1).
- **Recent emails**: the last five of ``email_log`` (newest first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from ...clock import as_utc
from ..models import (
    Addon,
    Affiliate,
    Domain,
    DomainStatus,
    EmailLog,
    Invoice,
    InvoiceStatus,
    Quote,
    Service,
    ThingStatus,
    Ticket,
    Transaction,
)
from ..money import ZERO
from .statements import ClientHeader, client_header

#: The statuses shown, in the admin screen's order.
SUMMARY_STATUSES = (InvoiceStatus.DRAFT, InvoiceStatus.UNPAID, InvoiceStatus.PAID, InvoiceStatus.CANCELLED,
                    InvoiceStatus.REFUNDED, InvoiceStatus.COLLECTIONS, InvoiceStatus.PAYMENT_PENDING)
RECENT_EMAILS = 5


@dataclass(frozen=True)
class StatusFigures:
    status: str
    count: int
    #: Sum of totals; for Unpaid, sum of balances due.
    amount: Decimal


@dataclass(frozen=True)
class RecentEmail:
    sent_at: datetime
    subject: str
    template: str
    to_address: str


@dataclass(frozen=True)
class ThingCounts:
    active: int
    total: int


@dataclass(frozen=True)
class ClientSummary:
    client: ClientHeader
    invoices: tuple[StatusFigures, ...]
    gross_revenue: Decimal
    client_expenses: Decimal
    credit_balance: Decimal
    services: ThingCounts
    addons: ThingCounts
    domains: ThingCounts
    quotes: int
    tickets: int
    affiliates: int
    recent_emails: tuple[RecentEmail, ...]

    @property
    def net_income(self) -> Decimal:
        return self.gross_revenue - self.client_expenses

    def invoice(self, status: str) -> StatusFigures:
        return next(f for f in self.invoices if f.status == status)

    def as_dict(self) -> dict:
        """JSON-friendly: amounts as strings rounded to the currency, times ISO."""
        plain = self.client.plain
        return {
            "client_id": self.client.client_id, "client": self.client.name, "currency": self.client.currency_code,
            "invoices": {f.status: {"count": f.count, "amount": plain(f.amount)} for f in self.invoices},
            "income": {"gross_revenue": plain(self.gross_revenue), "client_expenses": plain(self.client_expenses),
                       "net_income": plain(self.net_income), "credit_balance": plain(self.credit_balance)},
            "services": {"active": self.services.active, "total": self.services.total},
            "addons": {"active": self.addons.active, "total": self.addons.total},
            "domains": {"active": self.domains.active, "total": self.domains.total},
            "quotes": self.quotes, "tickets": self.tickets, "affiliates": self.affiliates,
            "recent_emails": [{"sent_at": e.sent_at.isoformat(), "subject": e.subject, "template": e.template,
                               "to": e.to_address} for e in self.recent_emails],
        }


def client_summary(session: Session, client_id: int) -> ClientSummary:
    """The figures of the client's summary page. Read-only; raises NotFound for an unknown client."""
    header = client_header(session, client_id)
    by_status = {row.status: row for row in session.execute(
        select(Invoice.status, func.count().label("count"),
               func.coalesce(func.sum(Invoice.total), 0).label("total"),
               func.coalesce(func.sum(Invoice.balance_due), 0).label("due"))
        .where(Invoice.client_id == client_id).group_by(Invoice.status))}
    statuses = [*SUMMARY_STATUSES, *sorted(s for s in by_status if s not in SUMMARY_STATUSES)]
    invoices = []
    for status in statuses:
        row = by_status.get(status)
        if row is None:
            invoices.append(StatusFigures(status, 0, ZERO))
        else:
            amount = row.due if status == InvoiceStatus.UNPAID else row.total
            invoices.append(StatusFigures(status, row.count, Decimal(amount)))
    money = session.execute(
        select(func.coalesce(func.sum(Transaction.amount_in), 0), func.coalesce(func.sum(Transaction.fees), 0),
               func.coalesce(func.sum(Transaction.amount_out), 0))
        .where(Transaction.client_id == client_id)).one()
    gross, fees, refunds = (Decimal(v) for v in money)
    emails = session.execute(
        select(EmailLog.sent_at, EmailLog.subject, EmailLog.template, EmailLog.to_address)
        .where(EmailLog.client_id == client_id)
        .order_by(EmailLog.sent_at.desc(), EmailLog.id.desc()).limit(RECENT_EMAILS)).all()
    return ClientSummary(
        client=header, invoices=tuple(invoices), gross_revenue=gross, client_expenses=fees + refunds,
        credit_balance=header.credit_balance,
        services=_things(session, Service, client_id, ThingStatus.ACTIVE),
        addons=_things(session, Addon, client_id, ThingStatus.ACTIVE),
        domains=_things(session, Domain, client_id, DomainStatus.ACTIVE),
        quotes=_count(session, Quote, client_id), tickets=_count(session, Ticket, client_id),
        affiliates=_count(session, Affiliate, client_id),
        # (in UTC whatever the database hands back: naive on MySQL/SQLite, the session's zone on PostgreSQL)
        recent_emails=tuple(RecentEmail(as_utc(sent_at), *rest) for sent_at, *rest in emails))


def _things(session: Session, model, client_id: int, active: str) -> ThingCounts:
    total, live = session.execute(
        select(func.count(), func.coalesce(func.sum(case((model.status == active, 1), else_=0)), 0))
        .where(model.client_id == client_id)).one()
    return ThingCounts(int(live), int(total))


def _count(session: Session, model, client_id: int) -> int:
    return session.execute(select(func.count()).select_from(model).where(model.client_id == client_id)).scalar_one()
