"""Late fees (SPEC §6): one "Late Fee" line on an Unpaid invoice once it is ``late_fee_days``
past due, at most once per invoice, ever; or, with ``late_fee_type`` ``interest``, one interest
line per calendar month (``collections/interest.py``).

The fee is the fixed ``late_fee_amount``, or that percentage of the invoice total before the fee,
raised to ``late_fee_minimum``, rounded to the invoice currency's minor unit. The invoice's totals
are then recomputed from all its lines with the tax rates it was issued with. The client is told
in the next reminder, whose template lists the invoice's lines.

Locks: the clients' rows, then the invoices' rows by id (the order of ``invoice_store``). The
``invoice_late_fees`` primary key is the final guard against a second fee.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import exists, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...store.arrays import among
from ...store.bulk import insert_rows_returning_ids, update_rows
from ..billing.invoice_store import for_update_of_invoices, lock_clients
from ..billing.tax import HUNDRED, Rate, Totals, compute_totals
from ..failures import ClientFailure
from ..models import (
    Client,
    ClientStatus,
    Currency,
    Invoice,
    InvoiceItem,
    InvoiceKind,
    InvoiceLateFee,
    InvoiceStatus,
    ItemType,
)
from ..models.collections import InvoiceInterestCharge
from ..money import ZERO, round_money
from ..settings import BillingSettings, load_settings
from ..tasks import TaskResult
from . import interest

log = logging.getLogger(__name__)

TASK = "apply_late_fees"
DESCRIPTION = "Late Fee"
PERCENTAGE = "percentage"
FIXED = "fixed"
INTEREST = "interest"
#: Spellings of ``late_fee_type`` we accept (case-insensitive), as operators type them.
FEE_TYPES = {"percentage": PERCENTAGE, "percent": PERCENTAGE, "fixed": FIXED, "fixed amount": FIXED,
             "interest": INTEREST}


def fee_type(settings: BillingSettings) -> str | None:
    """``percentage``, ``fixed`` or ``interest``; None for a value we do not know."""
    return FEE_TYPES.get(settings.late_fee_type.strip().lower())


def late_fee_for(total: Decimal, settings: BillingSettings, minor_units: int) -> Decimal:
    """The fee for an invoice of ``total`` (before the fee): the fixed amount or the percentage
    of the total, at least the minimum, rounded half-up to the currency's minor unit."""
    if fee_type(settings) == PERCENTAGE:
        fee = total * settings.late_fee_amount / HUNDRED
    else:
        fee = settings.late_fee_amount
    return round_money(max(fee, settings.late_fee_minimum), minor_units)


@dataclass(frozen=True)
class _Fee:
    client_id: int
    invoice_id: int
    amount: Decimal
    totals: Totals
    balance_due: Decimal
    minor_units: int

    def line(self) -> dict:
        def text(amount: Decimal) -> str:
            return str(round_money(amount, self.minor_units))

        return {"client_id": self.client_id, "invoice_id": self.invoice_id, "fee": text(self.amount),
                "total": text(self.totals.total), "balance_due": text(self.balance_due)}


def apply_late_fees_for_clients(session: Session, client_ids: Sequence[int], as_of: date, *,
                                dry_run: bool = False) -> TaskResult:
    """Add the late fee each Unpaid invoice of ``client_ids`` is due on ``as_of``; the caller commits.

    Locks the clients' rows, then the rows of the invoices that get a fee. Idempotent: at most one
    late fee per invoice, ever. With ``dry_run`` the same fees are computed and listed in
    ``preview``, and nothing is written.
    """
    result = TaskResult(task=TASK)
    settings = load_settings(session)
    if fee_type(settings) == INTEREST:
        return _apply_interest(session, client_ids, as_of, settings, result, dry_run=dry_run)
    if settings.late_fee_days <= 0 or settings.late_fee_amount <= 0:
        return result
    if fee_type(settings) is None:
        # An installation setting, not a client's data: reported once, no client is blamed.
        result.failures.append(ClientFailure(None, "settings.late_fee_type", settings.late_fee_type,
                                             f"is not one of {PERCENTAGE!r}, {FIXED!r} or {INTEREST!r}; "
                                             "no late fee was added"))
        return result
    return _plan_and_write(
        session, client_ids, result, dry_run=dry_run, table="invoice_late_fees",
        plan=lambda ids, minor_units: _plan(session, ids, as_of, settings, minor_units),
        write=lambda fees: _write(session, fees, as_of, settings), count=_count)


def _plan_and_write(session: Session, client_ids: Sequence[int], result: TaskResult, *, dry_run: bool, table: str,
                    plan: Callable[[list[int], dict[int, int]], Sequence[Any]],
                    write: Callable[[Sequence[Any]], None],
                    count: Callable[[TaskResult, Sequence[Any]], None]) -> TaskResult:
    """Lock the clients, plan the batch's charges (``plan(ids, minor units per client)``) and
    write them at once; if a charge clashes with one we did not expect (another application
    wrote it), redo client by client on a fresh read, so that the clash costs only its client
    (recorded against ``table``)."""
    clients = lock_clients(session, client_ids)
    result.clients = len(clients)
    result.succeeded_clients = set(clients)
    if not clients:
        return result
    minor_units = {cid: info.minor_units for cid, info in clients.items()}
    planned = plan(sorted(clients), minor_units)
    if dry_run or not planned:
        count(result, planned)
        return result
    try:
        with session.begin_nested():
            write(planned)
        count(result, planned)
    except IntegrityError as exc:
        log.warning("%s: batch write failed (%s); retrying client by client", table, exc.__class__.__name__)
        for client_id in sorted({p.client_id for p in planned}):
            try:
                with session.begin_nested():
                    mine = plan([client_id], minor_units)
                    write(mine)
                count(result, mine)
            except IntegrityError as exc_one:
                result.failures.append(ClientFailure(client_id, table, None, f"could not be recorded: {exc_one.orig}"))
                result.succeeded_clients.discard(client_id)
    return result


def _apply_interest(session: Session, client_ids: Sequence[int], as_of: date, settings: BillingSettings,
                    result: TaskResult, *, dry_run: bool) -> TaskResult:
    """The ``interest`` mode: the interest lines of every whole month not yet charged
    (``collections/interest.py``), with the same locks, dry run and fallback as the one-off fee."""
    if settings.late_fee_days <= 0 or settings.late_fee_interest_rate == 0:
        return result
    problem = interest.settings_problem(settings)
    if problem is not None:
        result.failures.append(problem)
        return result
    return _plan_and_write(
        session, client_ids, result, dry_run=dry_run, table="invoice_interest_charges",
        plan=lambda ids, minor_units: interest.plan_interest(session, ids, as_of, settings, minor_units),
        write=lambda planned: interest.write_interest(session, planned, as_of, settings), count=_count_interest)


def _count_interest(result: TaskResult, planned: Sequence[interest.InvoiceInterest]) -> None:
    for p in planned:
        result.fees_added += len(p.lines)
        result.amount += p.amount
        result.preview += p.preview()


def _count(result: TaskResult, fees: Sequence[_Fee]) -> None:
    result.fees_added += len(fees)
    result.amount += sum((f.amount for f in fees), ZERO)
    result.preview += [f.line() for f in fees]


def _plan(session: Session, client_ids: Sequence[int], as_of: date, settings: BillingSettings,
          client_minor_units: dict[int, int]) -> list[_Fee]:
    """Lock the invoices due a fee (by id) and compute their fees and new totals: one query for
    the invoices of the batch, one for their lines."""
    invoices = session.execute(for_update_of_invoices(session,
        select(Invoice.id, Invoice.client_id, Invoice.total, Invoice.credit_applied, Invoice.amount_paid,
               Invoice.tax_name1, Invoice.tax_rate1, Invoice.tax_name2, Invoice.tax_rate2,
               Currency.minor_units)
        .join(Client, Client.id == Invoice.client_id)
        .outerjoin(Currency, Currency.id == Invoice.currency_id)
        .where(among(session, Invoice.client_id, client_ids), Client.apply_late_fees.is_(True),
               Client.status != ClientStatus.CLOSED, Invoice.status == InvoiceStatus.UNPAID,
               Invoice.kind == InvoiceKind.STANDARD,
               Invoice.date_due <= as_of - timedelta(days=settings.late_fee_days),
               ~exists().where(InvoiceLateFee.invoice_id == Invoice.id),
               # One late-fee regime per invoice: one that bears interest gets no one-off fee.
               ~exists().where(InvoiceInterestCharge.invoice_id == Invoice.id))
        .order_by(Invoice.id), client_ids)).all()
    if not invoices:
        return []
    lines: dict[int, list[tuple[Decimal, bool]]] = {}
    for invoice_id, amount, taxed in session.execute(
            select(InvoiceItem.invoice_id, InvoiceItem.amount, InvoiceItem.taxed)
            .where(among(session, InvoiceItem.invoice_id, [i.id for i in invoices]))
            .order_by(InvoiceItem.id)):
        lines.setdefault(invoice_id, []).append((Decimal(amount), bool(taxed)))
    fees = []
    for inv in invoices:
        minor = inv.minor_units if inv.minor_units is not None else client_minor_units.get(inv.client_id, 2)
        fee = late_fee_for(Decimal(inv.total), settings, minor)
        if fee <= 0:
            continue
        # The rates the invoice was issued with, not today's rules: a late fee does not re-tax it.
        rate1 = Rate(inv.tax_name1 or "", Decimal(inv.tax_rate1)) if inv.tax_rate1 else None
        rate2 = Rate(inv.tax_name2 or "", Decimal(inv.tax_rate2)) if inv.tax_rate2 else None
        totals = compute_totals([*lines.get(inv.id, []), (fee, settings.late_fee_taxed)], rate1, rate2,
                                inclusive=settings.tax_type == "inclusive", compound=settings.tax_l2_compound,
                                minor_units=minor)
        balance = max(totals.total - Decimal(inv.credit_applied) - Decimal(inv.amount_paid), ZERO)
        fees.append(_Fee(inv.client_id, inv.id, fee, totals, balance, minor))
    return fees


def _write(session: Session, fees: Sequence[_Fee], as_of: date, settings: BillingSettings) -> None:
    if not fees:
        return
    # The lines, with the ids the database gives them (on MySQL/MariaDB the table's AUTO_INCREMENT,
    # the one id source every writer of invoice_items shares), then the guard: a fee already
    # recorded fails there, and the caller's savepoint takes the lines back with it.
    item_ids = insert_rows_returning_ids(session, InvoiceItem.__table__, [
        {"invoice_id": f.invoice_id, "client_id": f.client_id, "item_type": ItemType.LATE_FEE.value,
         "item_id": None, "description": DESCRIPTION, "amount": f.amount, "taxed": settings.late_fee_taxed,
         "due_date": None, "period_end": None} for f in fees])
    session.execute(insert(InvoiceLateFee), [
        {"invoice_id": f.invoice_id, "invoice_item_id": item_id, "amount": f.amount, "applied_on": as_of}
        for f, item_id in zip(fees, item_ids, strict=True)])
    update_rows(session, Invoice.__table__, [
        {"id": f.invoice_id, "subtotal": f.totals.subtotal, "tax1": f.totals.tax1, "tax2": f.totals.tax2,
         "total": f.totals.total, "balance_due": f.balance_due} for f in fees])
