"""Finding what is due (SPEC §4): services, addons, domains and billable items of some clients.

Set-based: one query per kind of thing for a whole batch of clients. A thing that already has
a billed period for its due date on an invoice that is not Cancelled is left out by the query
itself; the ``billed_periods`` primary key remains the final guard.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal

from sqlalchemy import and_, exists, func, literal, select
from sqlalchemy.orm import Session, aliased

from .cycles import CYCLE_MONTHS, advance_period, anchor_day, next_due_date
from .invoice_plan import Line
from .models import (
    Addon,
    BillableItem,
    BilledPeriod,
    CancelRequest,
    Domain,
    Invoice,
    InvoiceAction,
    InvoiceStatus,
    ItemType,
    Product,
    Service,
)
from .settings import BillingSettings

RECURRING = tuple(c.value for c in CYCLE_MONTHS)


@dataclass(frozen=True)
class ThingUpdate:
    """What to write on the thing once its line is invoiced."""

    item_type: str
    item_id: int
    values: dict


@dataclass
class DueThings:
    lines: dict[int, list[Line]] = field(default_factory=dict)
    #: Claims held by Cancelled invoices that a new invoice may take over.
    stale_claims: set[tuple[str, int, date]] = field(default_factory=set)
    updates: dict[tuple[str, int], ThingUpdate] = field(default_factory=dict)

    def add(self, client_id: int, line: Line, update: ThingUpdate, stale: int | None) -> None:
        self.lines.setdefault(client_id, []).append(line)
        self.updates[line.key] = update
        if stale is not None:
            self.stale_claims.add((line.item_type, line.item_id, line.due_date))


def _claimed(item_type: str, item_id, due_date):
    """An invoice other than a Cancelled one already bills this thing for this due date."""
    bp, inv = aliased(BilledPeriod), aliased(Invoice)
    return exists().where(
        bp.item_type == item_type, bp.item_id == item_id, bp.due_date == due_date,
        inv.id == bp.invoice_id, inv.status != InvoiceStatus.CANCELLED,
    ).correlate_except(bp, inv)


def _invoiced_today(item_type: str, item_id, as_of: date):
    """Continuous generation catches up one period per thing per day, even if the job runs twice."""
    bp, inv = aliased(BilledPeriod), aliased(Invoice)
    return exists().where(
        bp.item_type == item_type, bp.item_id == item_id, inv.id == bp.invoice_id,
        inv.date_created == as_of, inv.status != InvoiceStatus.CANCELLED,
    ).correlate_except(bp, inv)


def _stale_claim(item_type: str, item_id, due_date):
    return and_(BilledPeriod.item_type == item_type, BilledPeriod.item_id == item_id,
                BilledPeriod.due_date == due_date)


def _period(start: date, cycle: str, due_day: int | None) -> tuple[date, int]:
    """The next due date after ``start`` and the anchor day to keep."""
    anchor = anchor_day(start, due_day)
    return next_due_date(start, cycle, anchor), anchor


def _text(d: date) -> str:
    return d.isoformat()


def find_due(
    session: Session,
    client_ids: Collection[int],
    as_of: date,
    settings: BillingSettings,
    *,
    only: Sequence[tuple[str, int]] | None = None,
) -> DueThings:
    """Due lines of ``client_ids`` on ``as_of``.

    With ``only`` (invoice selected items), exactly those things are considered, whatever their
    status window: their next renewal is invoiced now.
    """
    due = DueThings()
    if not client_ids:
        return due
    ids = sorted(client_ids)
    continuous = settings.continuous_invoice_generation
    selected = {(t, i) for t, i in only} if only is not None else None
    # Per-cycle windows are checked in Python; SQL filters with the widest window.
    horizon = date.max if selected is not None else as_of + timedelta(days=settings.max_generation_days())

    def in_window(driving: date, cycle: str, *, domain: bool = False) -> bool:
        if selected is not None:
            return True
        return driving <= as_of + timedelta(days=settings.generation_days(cycle, domain=domain))

    def wanted(item_type: str, column):
        if selected is None:
            return ~_invoiced_today(item_type, column, as_of) if continuous else literal(True)
        chosen = [i for t, i in selected if t == item_type]
        return column.in_(chosen) if chosen else literal(False)

    # --- services -------------------------------------------------------------------------
    s_driving = Service.next_invoice_date if continuous else Service.next_due_date
    statuses = settings.statuses_for_services() if selected is None else _selectable_statuses()
    rows = session.execute(
        select(Service.id, Service.client_id, Service.amount, Service.billing_cycle, Service.payment_method,
               s_driving.label("due"), Service.due_day, Service.taxed, Service.domain,
               func.coalesce(Product.name, Service.name).label("name"), BilledPeriod.invoice_id.label("stale"))
        .outerjoin(Product, Product.id == Service.product_id)
        .outerjoin(BilledPeriod, _stale_claim(ItemType.SERVICE, Service.id, s_driving))
        .where(Service.client_id.in_(ids), Service.status.in_(statuses), Service.billing_cycle.in_(RECURRING),
               s_driving.is_not(None), s_driving <= horizon, wanted(ItemType.SERVICE, Service.id),
               ~exists().where(CancelRequest.service_id == Service.id),
               ~_claimed(ItemType.SERVICE, Service.id, s_driving))
        .order_by(Service.client_id, Service.id)
    ).all()
    service_by_domain: dict[tuple[int, str], tuple[str, int]] = {}
    for r in rows:
        if not in_window(r.due, r.billing_cycle):
            continue
        after, anchor = _period(r.due, r.billing_cycle, r.due_day)
        name = r.name or f"Service #{r.id}"
        label = f"{name} - {r.domain}" if r.domain else name
        line = Line(ItemType.SERVICE, r.id, f"{label} ({_text(r.due)} - {_text(after - timedelta(days=1))})",
                    Decimal(r.amount), bool(r.taxed), r.due, r.payment_method, after - timedelta(days=1))
        due.add(r.client_id, line, ThingUpdate(ItemType.SERVICE, r.id,
                                               {"next_invoice_date": after, "due_day": anchor}), r.stale)
        if r.domain:
            service_by_domain.setdefault((r.client_id, r.domain.lower()), line.key)

    # --- addons ---------------------------------------------------------------------------
    parent = aliased(Service)
    a_driving = Addon.next_invoice_date if continuous else Addon.next_due_date
    rows = session.execute(
        select(Addon.id, Addon.client_id, Addon.service_id, Addon.name, Addon.amount, Addon.billing_cycle,
               Addon.payment_method, a_driving.label("due"), Addon.due_day, Addon.taxed,
               func.coalesce(Product.name, parent.name).label("parent_name"), parent.domain,
               BilledPeriod.invoice_id.label("stale"))
        .join(parent, parent.id == Addon.service_id)
        .outerjoin(Product, Product.id == parent.product_id)
        .outerjoin(BilledPeriod, _stale_claim(ItemType.ADDON, Addon.id, a_driving))
        .where(Addon.client_id.in_(ids), Addon.status.in_(statuses), Addon.billing_cycle.in_(RECURRING),
               a_driving.is_not(None), a_driving <= horizon, wanted(ItemType.ADDON, Addon.id),
               ~exists().where(CancelRequest.service_id == Addon.service_id),
               ~_claimed(ItemType.ADDON, Addon.id, a_driving))
        .order_by(Addon.client_id, Addon.id)
    ).all()
    for r in rows:
        if not in_window(r.due, r.billing_cycle):
            continue
        after, anchor = _period(r.due, r.billing_cycle, r.due_day)
        owner = f"{r.parent_name} - {r.domain}" if r.domain else (r.parent_name or f"Service #{r.service_id}")
        line = Line(ItemType.ADDON, r.id,
                    f"Addon: {r.name} ({owner}) ({_text(r.due)} - {_text(after - timedelta(days=1))})",
                    Decimal(r.amount), bool(r.taxed), r.due, r.payment_method, after - timedelta(days=1),
                    attach_to=(ItemType.SERVICE, r.service_id))
        due.add(r.client_id, line, ThingUpdate(ItemType.ADDON, r.id,
                                               {"next_invoice_date": after, "due_day": anchor}), r.stale)

    # --- domains --------------------------------------------------------------------------
    d_driving = Domain.next_invoice_date if continuous else Domain.next_due_date
    d_statuses = settings.domain_invoiceable_statuses if selected is None else _selectable_domain_statuses()
    rows = session.execute(
        select(Domain.id, Domain.client_id, Domain.domain, Domain.amount, Domain.billing_cycle,
               Domain.payment_method, d_driving.label("due"), Domain.due_day, Domain.taxed,
               BilledPeriod.invoice_id.label("stale"))
        .outerjoin(BilledPeriod, _stale_claim(ItemType.DOMAIN, Domain.id, d_driving))
        .where(Domain.client_id.in_(ids), Domain.status.in_(d_statuses), Domain.billing_cycle.in_(RECURRING),
               Domain.do_not_renew.is_(False), d_driving.is_not(None), d_driving <= horizon,
               wanted(ItemType.DOMAIN, Domain.id), ~_claimed(ItemType.DOMAIN, Domain.id, d_driving))
        .order_by(Domain.client_id, Domain.id)
    ).all()
    for r in rows:
        if not in_window(r.due, r.billing_cycle, domain=True):
            continue
        after, anchor = _period(r.due, r.billing_cycle, r.due_day)
        years = CYCLE_MONTHS[r.billing_cycle] / 12  # type: ignore[index]
        period = f"{int(years)} Year/s" if years >= 1 else f"{CYCLE_MONTHS[r.billing_cycle]} Month/s"  # type: ignore[index]
        line = Line(ItemType.DOMAIN, r.id,
                    f"Domain Renewal - {r.domain} - {period} ({_text(r.due)} - {_text(after - timedelta(days=1))})",
                    Decimal(r.amount), bool(r.taxed), r.due, r.payment_method, after - timedelta(days=1),
                    attach_to=service_by_domain.get((r.client_id, r.domain.lower())))
        due.add(r.client_id, line, ThingUpdate(ItemType.DOMAIN, r.id,
                                               {"next_invoice_date": after, "due_day": anchor}), r.stale)

    # --- billable items -------------------------------------------------------------------
    actions = [InvoiceAction.NEXT_RUN, InvoiceAction.NEXT_INVOICE, InvoiceAction.DUE_DATE, InvoiceAction.RECUR]
    rows = session.execute(
        select(BillableItem, BilledPeriod.invoice_id.label("stale"))
        .outerjoin(BilledPeriod, _stale_claim(ItemType.BILLABLE, BillableItem.id, BillableItem.due_date))
        .where(BillableItem.client_id.in_(ids), BillableItem.invoice_action.in_(actions),
               wanted(ItemType.BILLABLE, BillableItem.id),
               ~_claimed(ItemType.BILLABLE, BillableItem.id, BillableItem.due_date))
        .order_by(BillableItem.client_id, BillableItem.id)
    ).all()
    window = as_of + timedelta(days=settings.invoice_generation_days)
    for item, stale in rows:
        action = item.invoice_action
        if action == InvoiceAction.RECUR:
            if item.recur_for and item.invoice_count >= item.recur_for:
                continue
            if item.recur_every < 1 or item.recur_cycle not in ("Days", "Weeks", "Months", "Years"):
                continue
            if selected is None and item.due_date > window:
                continue
            values = {"invoice_count": item.invoice_count + 1,
                      "due_date": advance_period(item.due_date, item.recur_every, item.recur_cycle)}
        else:
            if item.invoice_count > 0:
                continue
            if action == InvoiceAction.DUE_DATE and selected is None and item.due_date > window:
                continue
            values = {"invoice_count": 1}
        line = Line(ItemType.BILLABLE, item.id, item.description, Decimal(item.amount), bool(item.taxed),
                    item.due_date, item.payment_method,
                    rides_next_invoice=action == InvoiceAction.NEXT_INVOICE and selected is None)
        due.add(item.client_id, line, ThingUpdate(ItemType.BILLABLE, item.id, values), stale)
    return due


def _selectable_statuses() -> tuple[str, ...]:
    """Invoice selected items: an admin may invoice anything that is not over."""
    return ("Pending", "Active", "Suspended")


def _selectable_domain_statuses() -> tuple[str, ...]:
    return ("Pending", "Pending Transfer", "Active", "Grace", "Redemption", "Expired")


#: Table of each thing type, for writing ``ThingUpdate``s.
THING_TABLES = {ItemType.SERVICE: Service, ItemType.ADDON: Addon, ItemType.DOMAIN: Domain,
                ItemType.BILLABLE: BillableItem}
