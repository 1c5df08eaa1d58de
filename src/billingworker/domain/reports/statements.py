"""Account statements (SPEC §13): each invoice, payment and credit of a date range as a row,
with opening, running and closing balances.

The balance is money in − money out − invoice totals + credit adjustments, in date order; a
positive balance is money the client has with us, a negative one money owed. What counts, so
that no money is counted twice:

- **Invoices** (dated ``date_created``): Unpaid, Paid, Payment Pending and Collections invoices
  are debits of their total. Draft and Cancelled invoices are not rows (never issued, or void).
  Add-funds invoices and Refunded invoices are rows with no debit: an add-funds invoice buys
  credit (its payment is the money), a refunded one is void (its refund is the money out).
- **Transactions** (dated by their time in the installation's time zone): ``amount_in`` is a
  credit ("Payment"), ``amount_out`` a debit ("Refund"). Gateway fees are our cost, not the
  client's, and are left out.
- **Credit history**: only adjustments count (a "Credit" row; positive = credit, negative =
  debit): lines linked to no invoice, not written by a payment (``gateway:*``), an add-funds
  invoice (``add_funds``) or a merge (``job:merge*``). Credit applied to an invoice, an
  overpayment kept as credit, a paid add-funds invoice and credit returned from a cancelled
  invoice only move money the statement already counted (as a payment or an invoice).

Both ends of the range are included. Rows of one day come invoices first, then transactions,
then credits, each in id order.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from sqlalchemy import and_, func, not_, or_, select
from sqlalchemy.orm import Session

from ..errors import NotFound, ValidationError
from ..models import Client, CreditHistory, Currency, Invoice, InvoiceKind, InvoiceStatus, Transaction
from ..money import ZERO, format_money, round_money

#: Invoice statuses whose total is a debit.
DEBIT_STATUSES = (InvoiceStatus.UNPAID, InvoiceStatus.PAID, InvoiceStatus.PAYMENT_PENDING,
                  InvoiceStatus.COLLECTIONS)
#: Invoice statuses listed on a statement (Draft and Cancelled never are).
LISTED_STATUSES = (*DEBIT_STATUSES, InvoiceStatus.REFUNDED)
#: Order of the row types within one day.
_RANK = {"Invoice": 0, "Payment": 1, "Refund": 1, "Credit": 2}


@dataclass(frozen=True)
class ClientHeader:
    """Who the client is and how their money is written (statements, summaries)."""

    client_id: int
    name: str
    currency_code: str
    prefix: str
    suffix: str
    minor_units: int
    credit_balance: Decimal

    def money(self, amount: Decimal) -> str:
        """``$12.50 USD``: the amount in the client's currency."""
        return format_money(amount, self.prefix, self.suffix, self.minor_units)

    def plain(self, amount: Decimal) -> str:
        """``12.50``: the amount rounded to the currency, for JSON and CSV."""
        return str(round_money(amount, self.minor_units))


def client_header(session: Session, client_id: int) -> ClientHeader:
    """The client's name and currency (the default currency if it has none). Raises NotFound."""
    row = session.execute(select(Client, Currency).outerjoin(Currency, Currency.id == Client.currency_id)
                          .where(Client.id == client_id)).first()
    if row is None:
        raise NotFound("client_id", client_id, "client")
    client, currency = row
    if currency is None:
        currency = session.execute(select(Currency).where(Currency.is_default)).scalars().first()
    name = " ".join(p for p in (client.first_name, client.last_name) if p)
    if client.company_name:
        name = f"{name} ({client.company_name})" if name else client.company_name
    return ClientHeader(client_id, name or client.email, currency.code if currency else "",
                        currency.prefix if currency else "", currency.suffix if currency else "",
                        currency.minor_units if currency else 2, Decimal(client.credit_balance))


@dataclass(frozen=True)
class StatementRow:
    type: str
    date: date
    description: str
    credit: Decimal
    debit: Decimal
    #: The running balance after this row.
    balance: Decimal


@dataclass(frozen=True)
class AccountStatement:
    client: ClientHeader
    date_from: date
    date_to: date
    opening_balance: Decimal
    rows: tuple[StatementRow, ...]
    closing_balance: Decimal

    @property
    def total_credits(self) -> Decimal:
        return sum((r.credit for r in self.rows), ZERO)

    @property
    def total_debits(self) -> Decimal:
        return sum((r.debit for r in self.rows), ZERO)

    def as_dict(self) -> dict:
        """JSON-friendly: dates ISO, amounts strings rounded to the currency."""
        plain = self.client.plain
        return {
            "client_id": self.client.client_id, "client": self.client.name, "currency": self.client.currency_code,
            "from": self.date_from.isoformat(), "to": self.date_to.isoformat(),
            "opening_balance": plain(self.opening_balance),
            "rows": [{"type": r.type, "date": r.date.isoformat(), "description": r.description,
                      "credit": plain(r.credit), "debit": plain(r.debit), "balance": plain(r.balance)}
                     for r in self.rows],
            "total_credits": plain(self.total_credits), "total_debits": plain(self.total_debits),
            "closing_balance": plain(self.closing_balance),
        }


def account_statement(session: Session, client_id: int, date_from: date, date_to: date, *,
                      time_zone: str = "UTC") -> AccountStatement:
    """The client's statement from ``date_from`` to ``date_to`` (both included).

    Read-only. The opening balance is the same sum over everything dated before ``date_from``;
    the closing balance is the opening plus the rows. Transactions are dated in ``time_zone``
    (the installation's). Raises NotFound (client) or ValidationError (``from`` after ``to``).
    """
    if date_from > date_to:
        raise ValidationError("from", date_from.isoformat(), f"is after to ({date_to.isoformat()})")
    header = client_header(session, client_id)
    zone = ZoneInfo(time_zone)
    starts, ends = _instant(date_from, zone), _instant(date_to + timedelta(days=1), zone)

    opening = (
        -_sum(session, Invoice.total, _debit_invoices(client_id), Invoice.date_created < date_from)
        + _sum(session, Transaction.amount_in - Transaction.amount_out, Transaction.client_id == client_id,
               Transaction.date < starts)
        + _sum(session, CreditHistory.amount, _adjustments(client_id), CreditHistory.date < date_from))

    entries: list[tuple[date, int, int, str, str, Decimal, Decimal]] = []
    for inv in session.execute(select(Invoice).where(
            Invoice.client_id == client_id, Invoice.status.in_(LISTED_STATUSES),
            Invoice.date_created >= date_from, Invoice.date_created <= date_to)).scalars():
        name = f"Invoice #{inv.number}" if inv.number is not None else f"Invoice id {inv.id}"
        if inv.kind == InvoiceKind.ADD_FUNDS:
            entries.append((inv.date_created, 0, inv.id, "Invoice", f"Add Funds {name} (credit, not a debit)",
                            ZERO, ZERO))
        elif inv.status == InvoiceStatus.REFUNDED:
            entries.append((inv.date_created, 0, inv.id, "Invoice", f"{name} (Refunded)", ZERO, ZERO))
        else:
            entries.append((inv.date_created, 0, inv.id, "Invoice", name, ZERO, Decimal(inv.total)))
    for txn in session.execute(select(Transaction).where(
            Transaction.client_id == client_id, Transaction.date >= starts, Transaction.date < ends)).scalars():
        money_in, money_out = Decimal(txn.amount_in), Decimal(txn.amount_out)
        kind = "Refund" if money_out > 0 and money_in == 0 else "Payment"
        text = txn.description or f"{txn.gateway} {txn.transaction_id}"
        entries.append((_local_date(txn.date, zone), _RANK[kind], txn.id, kind, text, money_in, money_out))
    for line in session.execute(select(CreditHistory).where(
            _adjustments(client_id), CreditHistory.date >= date_from, CreditHistory.date <= date_to)).scalars():
        amount = Decimal(line.amount)
        entries.append((line.date, _RANK["Credit"], line.id, "Credit", line.description,
                        max(amount, ZERO), max(-amount, ZERO)))

    rows = []
    balance = opening
    for day, _rank, _id, kind, text, credit, debit in sorted(entries, key=lambda e: e[:3]):
        balance += credit - debit
        rows.append(StatementRow(kind, day, text, credit, debit, balance))
    return AccountStatement(header, date_from, date_to, opening, tuple(rows), balance)


def _debit_invoices(client_id: int):
    return and_(Invoice.client_id == client_id, Invoice.status.in_(DEBIT_STATUSES),
                Invoice.kind != InvoiceKind.ADD_FUNDS)


def _adjustments(client_id: int):
    """Credit-history lines that are credit adjustments, not money counted elsewhere."""
    return and_(CreditHistory.client_id == client_id, CreditHistory.invoice_id.is_(None),
                not_(or_(CreditHistory.source == "add_funds", CreditHistory.source.like("gateway:%"),
                         CreditHistory.source.like("job:merge%"))))


def _sum(session: Session, expr, *where) -> Decimal:
    return Decimal(session.execute(select(func.coalesce(func.sum(expr), 0)).where(*where)).scalar_one())


def _instant(day: date, zone: ZoneInfo) -> datetime:
    """The UTC instant at which ``day`` begins in ``zone`` (transactions are stored in UTC)."""
    return datetime.combine(day, time(0), zone).astimezone(UTC)


def _local_date(moment: datetime, zone: ZoneInfo) -> date:
    # SQLite hands timestamps back naive; they were written in UTC.
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(zone).date()
