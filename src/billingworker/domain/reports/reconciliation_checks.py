"""The reconciliation's seven checks (SPEC §15, issue 12), run in this order by
``reconciliation.reconcile``. Each is one or a few set-based statements over the whole book (no
row-by-row reading: seconds on 50,000 clients and 200,000 services) and returns its findings,
each naming the check, the rows (table and ids) and a short reason:

``due_billed``
    Every service, addon and domain due by the day (invoiceable status, recurring cycle, no
    cancellation request, its driving date on or before ``as_of``: ``next_due_date``, or
    ``next_invoice_date`` with continuous generation) holds a billed period for that date on an
    invoice that is not Cancelled, and so does every billable item due by the day; every billed
    thing's ``next_invoice_date`` moved past the period it billed.
``periods_once``
    No thing is billed twice for one period: no two invoice items of a thing, on invoices that
    are not Cancelled, for the same due date or for overlapping periods; every such item holds
    its ``billed_periods`` row.
``numbers_gap_free``
    Invoice numbers are 1..N without a gap, N the sequence's last number (each number once is
    the unique index's guarantee).
``paid_moved_due_dates``
    Each Paid invoice moved the ``next_due_date`` of the services, addons and domains it billed
    past the due date it billed them for.
``credit_matches_history``
    Each client's credit history adds up to its credit balance.
``emails_settled``
    No outbox email is still queued or sending ``EMAIL_SETTLE_AFTER`` after it was written, and
    every failed one says why (``last_error``). A skipped email is settled by rule: it was no
    longer wanted (``messaging/still_wanted.py``).
``totals_add_up``
    Each invoice's lines and taxes add up to its total (exclusive prices: subtotal = the lines,
    total = subtotal + tax 1 + tax 2; inclusive: total = the lines, subtotal = total - taxes),
    its balance due is total - credit applied - amount paid (never below zero), and the credit
    applied equals the credit history spent on it.

Some departures are legitimate, and are reported as **explained** findings, which do not make
the books unclean: a thing due but unbilled whose client is parked or had a failure recorded by
the day's run (an operator already has it in ``billingworker failures``), or that was billed
another period on the day itself (continuous catch-up and invoices paid from credit at creation
bill one period per thing per day, SPEC §4); invoice numbers missing no more than the invoices
deleted with their clients (SPEC §12 deletes them; ``job_receipts`` count them).

Read-only; the caller's transaction sees one snapshot on PostgreSQL only if it is REPEATABLE READ,
which the checks do not need: each compares rows written in one billing transaction.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import and_, exists, func, literal, or_, select
from sqlalchemy.orm import Session, aliased

from ..cycles import CYCLE_MONTHS
from ..models import (
    Addon,
    BillableItem,
    BilledPeriod,
    CancelRequest,
    Client,
    CreditHistory,
    DailyRun,
    Domain,
    Invoice,
    InvoiceAction,
    InvoiceItem,
    InvoiceSequence,
    InvoiceStatus,
    ItemType,
    JobFailure,
    JobReceipt,
    OutboxEmail,
    OutboxStatus,
    Service,
)
from ..settings import load_settings, local_day_start

#: The checks, in the order they run and are shown: name -> what holds when it passes.
CHECKS: dict[str, str] = {
    "due_billed": "every thing due by the day is invoiced for its period",
    "periods_once": "no period billed twice",
    "numbers_gap_free": "invoice numbers 1..N without gaps",
    "paid_moved_due_dates": "every paid invoice moved its things' due dates",
    "credit_matches_history": "each client's credit history sums to its balance",
    "emails_settled": "every queued email sent, skipped or failed with a reason",
    "totals_add_up": "each invoice's lines and taxes add up to its total",
}
#: An outbox email still queued or sending this long after it was written is stuck: delivery
#: takes seconds, the relay re-offers a lost one within minutes (docs/jobs.md#relay_outbox).
EMAIL_SETTLE_AFTER = timedelta(hours=1)
#: Money compared in SQL is equal within half of the fourth decimal (the MONEY column's scale):
#: SQLite adds NUMERIC columns as floating point.
MONEY_TOLERANCE = Decimal("0.00005")
_RECURRING = tuple(c.value for c in CYCLE_MONTHS)
_THINGS = ((ItemType.SERVICE, Service, "services"), (ItemType.ADDON, Addon, "addons"),
           (ItemType.DOMAIN, Domain, "domains"))


@dataclass(frozen=True)
class Finding:
    """One departure from the books' rules: which check, which rows, why. ``explained``: a known,
    legitimate cause (see the module's docstring); it does not make the books unclean."""

    check: str
    table: str
    ids: tuple[int, ...]
    reason: str
    explained: bool = False

    def as_dict(self, *, max_ids: int | None = None) -> dict[str, Any]:
        ids = list(self.ids if max_ids is None else self.ids[:max_ids])
        out = {"check": self.check, "table": self.table, "ids": ids, "reason": self.reason,
               "explained": self.explained}
        if max_ids is not None and len(self.ids) > max_ids:
            out["more_ids"] = len(self.ids) - max_ids
        return out


# --- 1. every thing due by the day is invoiced for its period -----------------------------------

def _billed_for(item_type: str, item_id, due) -> Any:
    """EXISTS a billed period of the thing for ``due`` on an invoice that is not Cancelled."""
    return exists().where(BilledPeriod.item_type == item_type, BilledPeriod.item_id == item_id,
                          BilledPeriod.due_date == due, Invoice.id == BilledPeriod.invoice_id,
                          Invoice.status != InvoiceStatus.CANCELLED)


def _due_billed(session: Session, as_of: date, now: datetime) -> list[Finding]:
    settings = load_settings(session)
    continuous = settings.continuous_invoice_generation
    statuses = list(settings.statuses_for_services())
    live_client = Client.status != "Closed"
    unbilled: list[tuple[str, str, int, int, date]] = []  # (type, table, id, client id, due)
    for item_type, model, table in _THINGS:
        driving = model.next_invoice_date if continuous else model.next_due_date
        conditions = [driving.is_not(None), driving <= as_of, model.billing_cycle.in_(_RECURRING),
                      ~_billed_for(item_type, model.id, driving), live_client]
        if model is Domain:
            conditions += [model.status.in_(list(settings.domain_invoiceable_statuses)),
                           model.do_not_renew.is_(False)]
        else:
            parent = model.id if model is Service else model.service_id
            conditions += [model.status.in_(statuses),
                           ~exists().where(CancelRequest.service_id == parent)]
        rows = session.execute(select(model.id, model.client_id, driving)
                               .join(Client, Client.id == model.client_id).where(*conditions)
                               .order_by(model.id)).all()
        unbilled += [(item_type, table, r[0], r[1], r[2]) for r in rows]
    billable_rows = session.execute(
        select(BillableItem.id, BillableItem.client_id, BillableItem.due_date)
        .join(Client, Client.id == BillableItem.client_id)
        .where(BillableItem.due_date <= as_of, live_client,
               or_(and_(BillableItem.invoice_action == InvoiceAction.DUE_DATE, BillableItem.invoice_count == 0),
                   and_(BillableItem.invoice_action == InvoiceAction.RECUR, BillableItem.recur_every > 0,
                        or_(BillableItem.recur_for == 0, BillableItem.invoice_count < BillableItem.recur_for))))
        .order_by(BillableItem.id)).all()
    unbilled += [(ItemType.BILLABLE, "billable_items", r[0], r[1], r[2]) for r in billable_rows]

    findings = []
    if unbilled:
        parked, failed, billed_today = _explanations(session, as_of, unbilled)
        for item_type, table, item_id, client_id, due in unbilled:
            reason = f"{item_type} {item_id} of client {client_id} due {due.isoformat()} is not invoiced"
            if client_id in parked:
                findings.append(Finding("due_billed", table, (item_id,), f"{reason}: the client is parked", True))
            elif client_id in failed:
                findings.append(Finding("due_billed", table, (item_id,),
                                        f"{reason}: a failure was recorded for the client ({failed[client_id]})",
                                        True))
            elif (item_type, item_id) in billed_today:
                findings.append(Finding("due_billed", table, (item_id,),
                                        f"{reason}: another period was billed on {as_of.isoformat()} "
                                        "(one period per thing per day)", True))
            else:
                findings.append(Finding("due_billed", table, (item_id,), reason))

    # A billed thing moved on: its next_invoice_date is past every period billed on a live invoice.
    for item_type, model, table in _THINGS:
        rows = session.execute(
            select(model.id, func.max(InvoiceItem.due_date))
            .join(InvoiceItem, and_(InvoiceItem.item_type == item_type, InvoiceItem.item_id == model.id))
            .join(Invoice, Invoice.id == InvoiceItem.invoice_id)
            .where(Invoice.status != InvoiceStatus.CANCELLED, InvoiceItem.due_date.is_not(None),
                   or_(model.next_invoice_date.is_(None), model.next_invoice_date <= InvoiceItem.due_date))
            .group_by(model.id).order_by(model.id)).all()
        findings += [Finding("due_billed", table, (r[0],),
                             f"{item_type} {r[0]} was billed for {r[1].isoformat()} but its next_invoice_date "
                             "did not move past it") for r in rows]
    return findings


#: Invoices still owed (an earlier period of a thing in one of these holds its due date back).
OWED_STATUSES = (InvoiceStatus.UNPAID, InvoiceStatus.PAYMENT_PENDING, InvoiceStatus.COLLECTIONS)
#: The ``job_failures.actor`` of a failure to invoice: the generation, its batches, and the
#: daily run's generation task (``run_daily_batch`` records under the task's name).
INVOICING_ACTORS = ("generate_due_invoices", "generate_due_invoices_batch", "invoice_selected_items")


def _explanations(session: Session, as_of: date, unbilled) -> tuple[set[int], dict[int, str], set[tuple[str, int]]]:
    """For the unbilled things found: parked clients, clients with a failure recorded by the day's
    run (or on the day, by a job outside a run), and things billed another period on the day."""
    client_ids = sorted({u[3] for u in unbilled})
    parked = set(session.execute(select(Client.id).where(
        Client.id.in_(client_ids), Client.parked_at.is_not(None))).scalars())
    day_runs = select(DailyRun.id).where(DailyRun.run_date == as_of, DailyRun.dry_run.is_(False))
    # Only a failure to invoice explains a thing left unbilled (not a declined card, a refused
    # phone number...), and only one of the installation's day itself.
    since, until = local_day_start(session, as_of), local_day_start(session, as_of + timedelta(days=1))
    failed: dict[int, str] = {}
    for client_id, actor, reason in session.execute(
            select(JobFailure.client_id, JobFailure.actor, JobFailure.reason)
            .where(JobFailure.client_id.in_(client_ids), JobFailure.actor.in_(INVOICING_ACTORS),
                   or_(JobFailure.run_id.in_(day_runs),
                       and_(JobFailure.created_at >= since, JobFailure.created_at < until)))
            .order_by(JobFailure.id)):
        failed.setdefault(client_id, f"{actor}: {reason}"[:200])
    billed_today = set()
    for item_type in {u[0] for u in unbilled}:
        ids = sorted({u[2] for u in unbilled if u[0] == item_type})
        billed_today |= {(item_type, i) for i in session.execute(select(BilledPeriod.item_id).where(
            BilledPeriod.item_type == item_type, BilledPeriod.item_id.in_(ids),
            BilledPeriod.billed_on == as_of)).scalars()}
    return parked, failed, billed_today


# --- 2. no period billed twice ------------------------------------------------------------------

def _periods_once(session: Session, as_of: date, now: datetime) -> list[Finding]:
    a, b = aliased(InvoiceItem), aliased(InvoiceItem)
    ia, ib = aliased(Invoice), aliased(Invoice)
    things = [t.value for t in (ItemType.SERVICE, ItemType.ADDON, ItemType.DOMAIN, ItemType.BILLABLE)]
    same_or_overlapping = or_(
        a.due_date == b.due_date,
        and_(a.period_end.is_not(None), b.period_end.is_not(None),
             a.due_date <= b.period_end, b.due_date <= a.period_end))
    pairs = session.execute(
        select(a.item_type, a.item_id, a.id, a.due_date, b.id, b.due_date)
        .join(b, and_(b.item_type == a.item_type, b.item_id == a.item_id, b.id > a.id))
        .join(ia, ia.id == a.invoice_id).join(ib, ib.id == b.invoice_id)
        .where(a.item_type.in_(things), a.due_date.is_not(None), b.due_date.is_not(None),
               ia.status != InvoiceStatus.CANCELLED, ib.status != InvoiceStatus.CANCELLED, same_or_overlapping)
        .order_by(a.item_type, a.item_id, a.id, b.id)).all()
    by_thing: dict[tuple[str, int], tuple[set[int], set[date]]] = {}
    for item_type, item_id, a_id, a_due, b_id, b_due in pairs:
        ids, dues = by_thing.setdefault((item_type, item_id), (set(), set()))
        ids |= {a_id, b_id}
        dues |= {a_due, b_due}
    findings = [Finding("periods_once", "invoice_items", tuple(sorted(ids)),
                        f"{item_type} {item_id} billed more than once for "
                        f"{', '.join(d.isoformat() for d in sorted(dues))}")
                for (item_type, item_id), (ids, dues) in by_thing.items()]

    unguarded = session.execute(
        select(InvoiceItem.id, InvoiceItem.item_type, InvoiceItem.item_id, InvoiceItem.due_date)
        .join(Invoice, Invoice.id == InvoiceItem.invoice_id)
        .where(InvoiceItem.item_type.in_(things), InvoiceItem.due_date.is_not(None),
               Invoice.status != InvoiceStatus.CANCELLED,
               ~exists().where(BilledPeriod.item_type == InvoiceItem.item_type,
                               BilledPeriod.item_id == InvoiceItem.item_id,
                               BilledPeriod.due_date == InvoiceItem.due_date))
        .order_by(InvoiceItem.id)).all()
    findings += [Finding("periods_once", "invoice_items", (r[0],),
                         f"{r[1]} {r[2]} billed for {r[3].isoformat()} without its billed_periods row "
                         "(nothing guards that period against a second bill)") for r in unguarded]
    return findings


# --- 3. invoice numbers without gaps ------------------------------------------------------------

def _numbers_gap_free(session: Session, as_of: date, now: datetime) -> list[Finding]:
    from ..billing.invoice_store import INVOICE_SEQUENCE

    # A number used twice cannot happen: invoices.number is unique (uq_invoices_number).
    findings = []
    last = session.execute(select(InvoiceSequence.last_number).where(
        InvoiceSequence.name == INVOICE_SEQUENCE)).scalar()
    highest = session.execute(select(func.max(Invoice.number))).scalar()
    if last is None:
        last = highest or 0
    # A gap starts after each number whose successor is missing (and before 1 if 1 is missing).
    after = aliased(Invoice)
    starts = list(session.execute(
        select(Invoice.number, Invoice.id).where(
            Invoice.number.is_not(None), Invoice.number < last,
            ~exists().where(after.number == Invoice.number + 1)).order_by(Invoice.number)).all())
    lowest = session.execute(select(func.min(Invoice.number))).scalar()
    gaps: list[tuple[int, int, int | None, int | None]] = []  # (first missing, last missing, id before, id after)
    if last and (lowest is None or lowest > 1):
        upto = (lowest - 1) if lowest is not None else last
        gaps.append((1, upto, None, _invoice_with_number(session, lowest)))
    for number, invoice_id in starts:
        following = session.execute(select(func.min(Invoice.number)).where(Invoice.number > number)).scalar()
        upto = following - 1 if following is not None else last
        gaps.append((number + 1, upto, invoice_id, _invoice_with_number(session, following)))
    deleted_numbers, uncounted = _invoices_deleted_with_clients(session) if gaps else (set(), 0)
    # Numbers the deletion receipts name explain their gaps exactly; receipts written before they
    # named them (an invoice count only, Drafts included) explain at most that many others.
    # Counted per gap from the named numbers, never number by number (a gap may be millions wide).
    named_in = [sum(1 for n in deleted_numbers if first <= n <= upto) for first, upto, _, _ in gaps]
    unnamed = sum(upto - first + 1 - k for (first, upto, _, _), k in zip(gaps, named_in, strict=True))
    for (first, upto, before, following), named_count in zip(gaps, named_in, strict=True):
        span = f"number {first}" if first == upto else f"numbers {first}-{upto}"
        ids = tuple(i for i in (before, following) if i is not None)
        where = "after the last invoice" if following is None else "missing"
        reason = f"{span} {where} (the invoices around the gap are named)"
        named = named_count == upto - first + 1
        explained = named or 0 < unnamed <= uncounted
        if named:
            reason += "; deleted with their client (delete_client)"
        elif explained:
            reason += f"; up to {uncounted} invoices were deleted with their clients before the receipts named them"
        findings.append(Finding("numbers_gap_free", "invoices", ids, reason, explained))
    if highest is not None and highest > last:
        findings.append(Finding("numbers_gap_free", "invoice_sequences", (),
                                f"invoice number {highest} is past the sequence's last number {last}: "
                                "the next invoice would take a number already used"))
    return findings


def _invoice_with_number(session: Session, number: int | None) -> int | None:
    if number is None:
        return None
    return session.execute(select(Invoice.id).where(Invoice.number == number).limit(1)).scalar()


def _invoices_deleted_with_clients(session: Session) -> tuple[set[int], int]:
    """Invoices deleted with their clients (SPEC §12), from ``delete_client``'s receipts: the
    numbers the receipts name, and how many invoices older receipts (which name none) counted."""
    numbers: set[int] = set()
    uncounted = 0
    for raw in session.execute(select(JobReceipt.result).where(JobReceipt.key.like("delete_client:%"))).scalars():
        try:
            receipt = json.loads(raw)
            if "invoice_numbers" in receipt:
                numbers.update(int(n) for n in receipt["invoice_numbers"])
            else:
                uncounted += int(receipt.get("deleted", {}).get("invoices", 0))
        except (ValueError, TypeError, AttributeError):
            continue
    return numbers, uncounted


# --- 4. every paid invoice moved its things' due dates ------------------------------------------

def _paid_moved_due_dates(session: Session, as_of: date, now: datetime) -> list[Finding]:
    """A Paid invoice's period must have moved its thing's due date past it, unless an earlier
    period of the thing is still owed: a payment advances the due date through consecutive paid
    periods only (``payments.advance_paid_periods``), so paying February before January moves
    nothing until January is paid too."""
    findings = []
    earlier_item, earlier_invoice = aliased(InvoiceItem), aliased(Invoice)
    for item_type, model, table in _THINGS:
        owed_before = exists().where(
            earlier_item.invoice_id == earlier_invoice.id, earlier_item.item_type == item_type,
            earlier_item.item_id == model.id, earlier_invoice.status.in_(OWED_STATUSES),
            earlier_item.due_date < InvoiceItem.due_date,
            or_(model.next_due_date.is_(None), earlier_item.due_date >= model.next_due_date))
        rows = session.execute(
            select(Invoice.id, model.id, InvoiceItem.due_date, model.next_due_date)
            .join(InvoiceItem, InvoiceItem.invoice_id == Invoice.id)
            .join(model, and_(InvoiceItem.item_type == item_type, model.id == InvoiceItem.item_id))
            .where(Invoice.status == InvoiceStatus.PAID, InvoiceItem.due_date.is_not(None),
                   or_(model.next_due_date.is_(None), model.next_due_date <= InvoiceItem.due_date),
                   ~owed_before)
            .order_by(Invoice.id, model.id)).all()
        findings += [Finding("paid_moved_due_dates", "invoices", (r[0],),
                             f"invoice {r[0]} is Paid but {item_type} {r[1]} ({table}) still has next_due_date "
                             f"{r[3].isoformat() if r[3] else 'NULL'}, on or before the period it paid "
                             f"({r[2].isoformat()})") for r in rows]
    return findings


# --- 5. credit history = balance ----------------------------------------------------------------

def _credit_matches_history(session: Session, as_of: date, now: datetime) -> list[Finding]:
    history = (select(CreditHistory.client_id, func.sum(CreditHistory.amount).label("total"))
               .group_by(CreditHistory.client_id).subquery())
    total = func.coalesce(history.c.total, 0)
    rows = session.execute(
        select(Client.id, Client.credit_balance, total)
        .outerjoin(history, history.c.client_id == Client.id)
        .where(func.abs(Client.credit_balance - total) > MONEY_TOLERANCE).order_by(Client.id)).all()
    return [Finding("credit_matches_history", "clients", (r[0],),
                    f"credit balance {_money(r[1])} but its credit history sums to {_money(r[2])}") for r in rows]


# --- 6. every queued email settled --------------------------------------------------------------

def _emails_settled(session: Session, as_of: date, now: datetime) -> list[Finding]:
    before = now - EMAIL_SETTLE_AFTER
    stuck = session.execute(
        select(OutboxEmail.id, OutboxEmail.status)
        .where(OutboxEmail.status.in_([OutboxStatus.QUEUED, OutboxStatus.SENDING]),
               OutboxEmail.created_at < before).order_by(OutboxEmail.id)).all()
    findings = []
    for status in (OutboxStatus.QUEUED, OutboxStatus.SENDING):
        ids = tuple(r[0] for r in stuck if r[1] == status)
        if ids:
            findings.append(Finding("emails_settled", "email_outbox", ids,
                                    f"{len(ids)} email(s) still {status} more than "
                                    f"{int(EMAIL_SETTLE_AFTER.total_seconds() // 60)} minutes after they were "
                                    "queued"))
    silent = tuple(session.execute(select(OutboxEmail.id).where(
        OutboxEmail.status == OutboxStatus.FAILED,
        func.coalesce(func.trim(OutboxEmail.last_error), "") == "").order_by(OutboxEmail.id)).scalars())
    if silent:
        findings.append(Finding("emails_settled", "email_outbox", silent,
                                f"{len(silent)} failed email(s) without a reason (last_error is empty)"))
    return findings


# --- 7. lines + taxes = totals ------------------------------------------------------------------

def _totals_add_up(session: Session, as_of: date, now: datetime) -> list[Finding]:
    inclusive = load_settings(session).tax_type == "inclusive"
    lines = (select(InvoiceItem.invoice_id, func.sum(InvoiceItem.amount).label("total"))
             .group_by(InvoiceItem.invoice_id).subquery())
    spent = (select(CreditHistory.invoice_id, func.sum(CreditHistory.amount).label("total"))
             .where(CreditHistory.invoice_id.is_not(None), CreditHistory.source != "add_funds",
                    ~CreditHistory.source.like("gateway:%"))
             .group_by(CreditHistory.invoice_id).subquery())
    line_sum = func.coalesce(lines.c.total, 0)
    credit_spent = -func.coalesce(spent.c.total, 0)
    taxes = Invoice.tax1 + Invoice.tax2
    owed = Invoice.total - Invoice.credit_applied - Invoice.amount_paid

    def off(x, y):
        return func.abs(x - y) > MONEY_TOLERANCE

    if inclusive:
        total_rule = [(off(Invoice.total, line_sum), "total {total} is not the sum of its lines {lines}"),
                      (off(Invoice.subtotal, Invoice.total - taxes),
                       "subtotal {subtotal} is not total {total} - tax {tax1} - tax2 {tax2}")]
    else:
        total_rule = [(off(Invoice.subtotal, line_sum), "subtotal {subtotal} is not the sum of its lines {lines}"),
                      (off(Invoice.total, Invoice.subtotal + taxes),
                       "total {total} is not subtotal {subtotal} + tax {tax1} + tax2 {tax2}")]
    rules = [*total_rule,
             (and_(Invoice.status.in_([InvoiceStatus.UNPAID, InvoiceStatus.PAID]),
                   or_(and_(owed >= 0, off(Invoice.balance_due, owed)),
                       and_(owed < 0, off(Invoice.balance_due, literal(0))))),
              "balance due {balance_due} is not total {total} - credit applied {credit_applied} - paid {paid}"),
             (off(Invoice.credit_applied, credit_spent),
              "credit applied {credit_applied} but the credit history spent {spent} on it")]
    flags = [rule.label(f"rule{n}") for n, (rule, _) in enumerate(rules)]
    rows = session.execute(
        select(Invoice.id, Invoice.subtotal, Invoice.tax1, Invoice.tax2, Invoice.total, Invoice.credit_applied,
               Invoice.amount_paid, Invoice.balance_due, line_sum.label("lines"), credit_spent.label("spent"), *flags)
        .outerjoin(lines, lines.c.invoice_id == Invoice.id).outerjoin(spent, spent.c.invoice_id == Invoice.id)
        .where(or_(*(rule for rule, _ in rules))).order_by(Invoice.id)).all()
    findings = []
    for r in rows:
        values = {k: _money(getattr(r, k)) for k in ("subtotal", "tax1", "tax2", "total", "credit_applied",
                                                      "balance_due", "lines", "spent")}
        values["paid"] = _money(r.amount_paid)
        reasons = [text.format(**values) for n, (_, text) in enumerate(rules) if getattr(r, f"rule{n}")]
        findings.append(Finding("totals_add_up", "invoices", (r.id,), "; ".join(reasons)))
    return findings


def _money(value: Any) -> str:
    return str(Decimal(str(value or 0)).quantize(Decimal("0.01")))


#: Each check's function, in the order the checks run and are shown (the keys of CHECKS).
CHECK_FUNCTIONS = {"due_billed": _due_billed, "periods_once": _periods_once, "numbers_gap_free": _numbers_gap_free,
                   "paid_moved_due_dates": _paid_moved_due_dates, "credit_matches_history": _credit_matches_history,
                   "emails_settled": _emails_settled, "totals_add_up": _totals_add_up}
