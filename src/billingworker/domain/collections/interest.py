"""Interest as a late fee (SPEC §6, ``late_fee_type`` ``interest``): simple daily interest on an
overdue invoice's balance, one line per calendar month, capped per invoice.

The rules, as ``docs/decisions.md`` states them:

- **Period**: a calendar month. A month is charged once it is over (on any run day after its
  last day), while the invoice is Unpaid and at least ``late_fee_days`` past due. A run that
  missed days (or months) catches up every whole month not yet charged, each once, oldest first.
  The month the invoice is paid in is never charged: interest stops with the payment.
- **Days**: the days of the month that are past due, from the day after the due date (the
  first month is partial) to the month's last day.
- **Day count**: actual/365, also in leap years: a 29-day February is 29/365 of the annual
  rate, and a whole leap year 366/365.
- **Balance**: simple interest, never on interest: the invoice total before any interest line
  (``principal``), less what was paid and credited before the month's first charged day. What
  was paid is the invoice's own ``amount_paid`` + ``credit_applied``; the dated records (the
  invoice's transactions, money in less money out, and its credit-history spends) say which part
  came on or after that day; money without a dated record counts as paid before (the client's
  favour). Payments reduce the principal first.
- **Amount**: ``balance × rate ÷ 100 × days ÷ 365``, rounded once, half up, to the invoice
  currency's minor unit (``money.round_money``). ``late_fee_minimum`` does not apply.
- **Cap** per invoice (``late_fee_interest_cap_type``): ``amount`` (the cap itself) or
  ``percentage`` (of the principal); the line that reaches it is cut to it, later months get no
  line. ``none``: no cap.
- **Once**: the ``invoice_interest_charges`` primary key (invoice, month) is the guard; a run of
  the same day, or two workers at once, add nothing more. An invoice that carries a one-off late
  fee (``invoice_late_fees``) gets no interest, and the one-off fee skips an invoice that bears
  interest: one late-fee regime per invoice.

Locks: the clients' rows, then the invoices' rows by id, as the one-off late fee does.
"""

from __future__ import annotations

import calendar
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import exists, insert, select
from sqlalchemy.orm import Session

from ...store.arrays import among
from ...store.bulk import insert_rows_returning_ids, update_rows
from ..billing.invoice_store import for_update_of_invoices
from ..billing.tax import HUNDRED, Rate, Totals, compute_totals
from ..failures import ClientFailure
from ..models import (
    Client,
    ClientStatus,
    CreditHistory,
    Currency,
    Invoice,
    InvoiceItem,
    InvoiceKind,
    InvoiceLateFee,
    InvoiceStatus,
    ItemType,
    Transaction,
)
from ..models.collections import InvoiceInterestCharge
from ..money import ZERO, round_money
from ..settings import MAX_INTEREST_RATE, BillingSettings, local_day

#: actual/365: the days of a year, leap or not.
DAYS_IN_YEAR = 365
NO_CAP, CAP_AMOUNT, CAP_PERCENTAGE = "none", "amount", "percentage"


@dataclass(frozen=True)
class Period:
    """One calendar month of interest: ``start`` is its first day (the key), ``first_day`` ..
    ``end`` the days of it that are past due."""

    start: date
    first_day: date
    end: date

    @property
    def days(self) -> int:
        return (self.end - self.first_day).days + 1

    def label(self) -> str:
        return f"Interest {self.first_day.isoformat()} – {self.end.isoformat()}"


def month_end(day: date) -> date:
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def whole_periods(date_due: date, as_of: date) -> list[Period]:
    """The calendar months with past-due days (from ``date_due + 1``) that are over by
    ``as_of`` (their last day is before it), oldest first."""
    first = date_due + timedelta(days=1)
    out = []
    start = first.replace(day=1)
    while month_end(start) < as_of:
        out.append(Period(start, max(start, first), month_end(start)))
        start = month_end(start) + timedelta(days=1)
    return out


def interest_for(balance: Decimal, rate: Decimal, days: int, minor_units: int = 2) -> Decimal:
    """``balance × rate % × days ÷ 365``, rounded once, half up (simple interest, actual/365).

    >>> interest_for(Decimal("1000.00"), Decimal("12"), 29)
    Decimal('9.53')
    """
    # Multiply before dividing, and round only the result.
    return round_money(balance * rate * days / (HUNDRED * DAYS_IN_YEAR), minor_units)


def interest_cap(principal: Decimal, settings: BillingSettings, minor_units: int) -> Decimal | None:
    """The most interest an invoice of ``principal`` takes; None without a cap."""
    kind = settings.late_fee_interest_cap_type.strip().lower()
    if kind == CAP_AMOUNT:
        return round_money(settings.late_fee_interest_cap, minor_units)
    if kind == CAP_PERCENTAGE:
        return round_money(principal * settings.late_fee_interest_cap / HUNDRED, minor_units)
    return None


def settings_problem(settings: BillingSettings) -> ClientFailure | None:
    """A value the admin panel wrote that the settings command would refuse: reported once."""
    if settings.late_fee_interest_cap_type.strip().lower() not in (NO_CAP, CAP_AMOUNT, CAP_PERCENTAGE):
        return ClientFailure(None, "settings.late_fee_interest_cap_type", settings.late_fee_interest_cap_type,
                             "is not one of 'none', 'amount' or 'percentage'; no interest was added")
    if not ZERO <= settings.late_fee_interest_rate <= MAX_INTEREST_RATE:
        return ClientFailure(None, "settings.late_fee_interest_rate", str(settings.late_fee_interest_rate),
                             f"is not a percentage from 0 to {MAX_INTEREST_RATE}; no interest was added")
    if settings.late_fee_interest_cap < 0:
        return ClientFailure(None, "settings.late_fee_interest_cap", str(settings.late_fee_interest_cap),
                             "must not be negative; no interest was added")
    return None


@dataclass(frozen=True)
class InterestLine:
    period: Period
    balance: Decimal
    amount: Decimal


@dataclass(frozen=True)
class InvoiceInterest:
    """The interest lines one invoice gets in this run, and its totals after them."""

    client_id: int
    invoice_id: int
    lines: tuple[InterestLine, ...]
    totals: Totals
    balance_due: Decimal
    minor_units: int

    @property
    def amount(self) -> Decimal:
        return sum((ln.amount for ln in self.lines), ZERO)

    def preview(self) -> list[dict]:
        def text(amount: Decimal) -> str:
            return str(round_money(amount, self.minor_units))

        return [{"client_id": self.client_id, "invoice_id": self.invoice_id, "fee": text(ln.amount),
                 "period": f"{ln.period.first_day.isoformat()} – {ln.period.end.isoformat()}",
                 "total": text(self.totals.total), "balance_due": text(self.balance_due)} for ln in self.lines]


def plan_interest(session: Session, client_ids: Sequence[int], as_of: date, settings: BillingSettings,
                  client_minor_units: dict[int, int]) -> list[InvoiceInterest]:
    """Lock the invoices that may bear interest (by id) and compute the lines each gets on
    ``as_of``: a handful of queries for the whole batch (invoices, their lines, their charges,
    their dated payments and credit)."""
    rate = settings.late_fee_interest_rate
    invoices = session.execute(for_update_of_invoices(session,
        select(Invoice.id, Invoice.client_id, Invoice.date_due, Invoice.credit_applied, Invoice.amount_paid,
               Invoice.tax_name1, Invoice.tax_rate1, Invoice.tax_name2, Invoice.tax_rate2, Currency.minor_units)
        .join(Client, Client.id == Invoice.client_id)
        .outerjoin(Currency, Currency.id == Invoice.currency_id)
        .where(among(session, Invoice.client_id, client_ids), Client.apply_late_fees.is_(True),
               Client.status != ClientStatus.CLOSED, Invoice.status == InvoiceStatus.UNPAID,
               Invoice.kind == InvoiceKind.STANDARD,
               Invoice.date_due <= as_of - timedelta(days=settings.late_fee_days),
               ~exists().where(InvoiceLateFee.invoice_id == Invoice.id))
        .order_by(Invoice.id), client_ids)).all()
    invoices = [inv for inv in invoices if whole_periods(inv.date_due, as_of)]
    if not invoices:
        return []
    ids = [inv.id for inv in invoices]
    charged: dict[int, dict[date, Decimal]] = {}
    interest_items: set[int] = set()
    for invoice_id, start, amount, item_id in session.execute(
            select(InvoiceInterestCharge.invoice_id, InvoiceInterestCharge.period_start,
                   InvoiceInterestCharge.amount, InvoiceInterestCharge.invoice_item_id)
            .where(among(session, InvoiceInterestCharge.invoice_id, ids))):
        charged.setdefault(invoice_id, {})[start] = Decimal(amount)
        if item_id is not None:
            interest_items.add(item_id)
    lines: dict[int, list[tuple[Decimal, bool]]] = {}
    principal_lines: dict[int, list[tuple[Decimal, bool]]] = {}
    for item_id, invoice_id, amount, taxed in session.execute(
            select(InvoiceItem.id, InvoiceItem.invoice_id, InvoiceItem.amount, InvoiceItem.taxed)
            .where(among(session, InvoiceItem.invoice_id, ids)).order_by(InvoiceItem.id)):
        lines.setdefault(invoice_id, []).append((Decimal(amount), bool(taxed)))
        if item_id not in interest_items:
            principal_lines.setdefault(invoice_id, []).append((Decimal(amount), bool(taxed)))
    received = _dated_receipts(session, ids)

    planned = []
    for inv in invoices:
        minor = inv.minor_units if inv.minor_units is not None else client_minor_units.get(inv.client_id, 2)
        # The rates the invoice was issued with, not today's rules: interest does not re-tax it.
        rate1 = Rate(inv.tax_name1 or "", Decimal(inv.tax_rate1)) if inv.tax_rate1 else None
        rate2 = Rate(inv.tax_name2 or "", Decimal(inv.tax_rate2)) if inv.tax_rate2 else None

        def totals(items: list[tuple[Decimal, bool]], rate1=rate1, rate2=rate2, minor=minor) -> Totals:
            return compute_totals(items, rate1, rate2, inclusive=settings.tax_type == "inclusive",
                                  compound=settings.tax_l2_compound, minor_units=minor)

        principal = totals(principal_lines.get(inv.id, [])).total
        paid = Decimal(inv.amount_paid) + Decimal(inv.credit_applied)
        done = charged.get(inv.id, {})
        cap = interest_cap(principal, settings, minor)
        so_far = sum(done.values(), ZERO)
        new: list[InterestLine] = []
        for period in whole_periods(inv.date_due, as_of):
            if period.start in done:
                continue
            if cap is not None and so_far >= cap:
                break
            later = sum((amount for day, amount in received.get(inv.id, []) if day >= period.first_day), ZERO)
            paid_before = max(paid - later, ZERO)
            balance = min(max(principal - paid_before, ZERO), principal)
            amount = interest_for(balance, rate, period.days, minor)
            if cap is not None:
                amount = min(amount, cap - so_far)
            if amount <= 0:
                continue
            so_far += amount
            new.append(InterestLine(period, balance, amount))
        if not new:
            continue
        after = totals([*lines.get(inv.id, []), *((ln.amount, settings.late_fee_taxed) for ln in new)])
        balance_due = max(after.total - Decimal(inv.credit_applied) - Decimal(inv.amount_paid), ZERO)
        planned.append(InvoiceInterest(inv.client_id, inv.id, tuple(new), after, balance_due, minor))
    return planned


def _dated_receipts(session: Session, invoice_ids: Sequence[int]) -> dict[int, list[tuple[date, Decimal]]]:
    """Per invoice, the day and amount of each dated payment toward it: its transactions (money
    in less money out, on the installation's day of the transaction's time: a payment at 20:00
    in New York on the 31st is paid on the 31st, not on the UTC 1st) and its credit-history
    spends (negative amounts linked to it, dated by their day)."""
    out: dict[int, list[tuple[date, Decimal]]] = {}
    for invoice_id, when, money_in, money_out in session.execute(
            select(Transaction.invoice_id, Transaction.date, Transaction.amount_in, Transaction.amount_out)
            .where(among(session, Transaction.invoice_id, invoice_ids))):
        day = local_day(session, when)
        out.setdefault(invoice_id, []).append((day, Decimal(money_in) - Decimal(money_out)))
    for invoice_id, day, amount in session.execute(
            select(CreditHistory.invoice_id, CreditHistory.date, CreditHistory.amount)
            .where(among(session, CreditHistory.invoice_id, invoice_ids), CreditHistory.amount < 0)):
        out.setdefault(invoice_id, []).append((day, -Decimal(amount)))
    return out


def write_interest(session: Session, planned: Sequence[InvoiceInterest], as_of: date,
                   settings: BillingSettings) -> None:
    """The guard rows first, as a plain INSERT (a month already charged fails here, before any
    line is added), then the lines, then the invoices' totals."""
    rows = [(p, ln) for p in planned for ln in p.lines]
    if not rows:
        return
    # The lines first, with the ids the database gives them (one id source for invoice_items,
    # AUTO_INCREMENT on MySQL/MariaDB); then the guard, whose clash takes them back (savepoint).
    item_ids = insert_rows_returning_ids(session, InvoiceItem.__table__, [
        {"invoice_id": p.invoice_id, "client_id": p.client_id, "item_type": ItemType.LATE_FEE.value,
         "item_id": None, "description": ln.period.label(), "amount": ln.amount, "taxed": settings.late_fee_taxed,
         "due_date": ln.period.first_day, "period_end": ln.period.end} for p, ln in rows])
    session.execute(insert(InvoiceInterestCharge), [
        {"invoice_id": p.invoice_id, "period_start": ln.period.start, "first_day": ln.period.first_day,
         "period_end": ln.period.end, "days": ln.period.days, "balance": ln.balance,
         "rate": settings.late_fee_interest_rate, "amount": ln.amount, "invoice_item_id": item_id,
         "applied_on": as_of}
        for (p, ln), item_id in zip(rows, item_ids, strict=True)])
    update_rows(session, Invoice.__table__, [
        {"id": p.invoice_id, "subtotal": p.totals.subtotal, "tax1": p.totals.tax1, "tax2": p.totals.tax2,
         "total": p.totals.total, "balance_due": p.balance_due} for p in planned])
