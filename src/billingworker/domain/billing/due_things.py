"""Finding what is due (SPEC §4): services, addons, domains and billable items of some clients.

Set-based and index-friendly: one query per kind of thing for a whole batch of clients, then
one query per kind for the billed periods of just those candidates (exact index look-ups).
Left out here:

- a thing already billed for its due date, by any path, on an invoice that is not Cancelled;
- for the due-invoice generation of day D, a thing that generation billed another period for
  on billing day D (``billed_periods.billed_on``): one period per thing per billing day, so
  running a day twice, in sequence or at once, bills what running it once bills, even when the
  first pass moved the thing's driving date (an invoice paid from credit at creation). If that
  day's invoice was Cancelled, the same period may be billed again (taking the billed period over
  with its billing day), never another one.

The ``billed_periods`` primary key and its unique (thing, billed_on) index remain the final
guards when the invoice is written.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from ...store.arrays import among
from ...store.billed_periods import billed_periods_of
from ..cycles import CYCLE_MONTHS, add_months, advance_period, anchor_day
from ..models import (
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
from ..settings import BillingSettings
from .invoice_plan import PlannedItem

RECURRING = tuple(c.value for c in CYCLE_MONTHS)
RECUR_UNITS = ("Days", "Weeks", "Months", "Years")

#: Table of each thing type, for writing ``ThingUpdate``s.
THING_TABLES = {ItemType.SERVICE: Service, ItemType.ADDON: Addon, ItemType.DOMAIN: Domain,
                ItemType.BILLABLE: BillableItem}


@dataclass(slots=True)  # hot path: plain slots are ~5x faster to build than frozen
class ThingUpdate:
    """What to write on the thing once its line is invoiced."""

    item_type: str
    item_id: int
    values: dict


@dataclass
class DueThings:
    items: dict[int, list[PlannedItem]] = field(default_factory=dict)
    #: Billed periods held by Cancelled invoices that a new invoice may take over.
    cancelled_periods: set[tuple[str, int, date]] = field(default_factory=set)
    updates: dict[tuple[str, int], ThingUpdate] = field(default_factory=dict)
    #: The billing day to record on the billed periods (the generation's ``as_of``); None for the
    #: other paths (invoice selected items), whose billed periods take no billing day.
    billed_on: date | None = None

    def add(self, client_id: int, line: PlannedItem, update: ThingUpdate) -> None:
        self.items.setdefault(client_id, []).append(line)
        self.updates[line.key] = update


@dataclass(slots=True)  # hot path: plain slots are ~5x faster to build than frozen
class _Candidate:
    client_id: int
    line: PlannedItem
    update: ThingUpdate


def _iso(d: date) -> str:
    return d.isoformat()


def _recurring_line(item_type: str, item_id: int, label: str, amount, taxed, due: date, cycle: str,
                    due_day: int | None, payment_method: str, attach_to=None) -> tuple[PlannedItem, ThingUpdate]:
    anchor = anchor_day(due, due_day)
    after = add_months(due, CYCLE_MONTHS[cycle], anchor)  # next_due_date, its anchor known (a hot path)
    end = after - timedelta(days=1)
    line = PlannedItem(item_type, item_id, f"{label} ({_iso(due)} - {_iso(end)})", Decimal(amount), bool(taxed), due,
                       payment_method, end, attach_to=attach_to)
    return line, ThingUpdate(item_type, item_id, {"next_invoice_date": after, "due_day": anchor})


@dataclass(frozen=True)
class Window:
    """Which driving dates are due on ``as_of`` (SPEC §4): each cycle's generation days, or,
    for the things an admin selected (``selected``), any date at all."""

    as_of: date
    settings: BillingSettings
    selected: bool = False

    def horizon(self) -> date:
        """The widest window, for SQL (the per-cycle windows are checked in Python)."""
        return date.max if self.selected else self.as_of + timedelta(days=self.settings.max_generation_days())

    def admits(self, driving: date, cycle: str, *, domain: bool = False) -> bool:
        return self.selected or driving <= self.as_of + timedelta(
            days=self.settings.generation_days(cycle, domain=domain))


def find_due(
    session: Session,
    client_ids: Collection[int],
    as_of: date,
    settings: BillingSettings,
    *,
    only: Sequence[tuple[str, int]] | None = None,
) -> DueThings:
    """Due lines of ``client_ids`` on ``as_of``: the queries here, the rules in the pure
    functions below (``service_items``, ``addon_items``, ``domain_items``, ``billable_items``,
    ``keep_unbilled``).

    With ``only`` (invoice selected items) exactly those things are considered and the
    generation window does not apply: their next renewal is invoiced now. Without it (the
    due-invoice generation), ``as_of`` is also the billing day: a thing billed on that day
    for another period is left out, and the items' billed periods will carry the day.
    """
    due = DueThings(billed_on=as_of if only is None else None)
    if not client_ids:
        return due
    ids = sorted(client_ids)
    continuous = settings.continuous_invoice_generation
    chosen: dict[str, list[int]] | None = None
    if only is not None:
        chosen = {}
        for t, i in only:
            chosen.setdefault(t, []).append(i)
    window = Window(as_of, settings, selected=chosen is not None)
    horizon = window.horizon()

    def restrict(stmt, item_type: str, id_column):
        if chosen is None:
            return stmt
        return stmt.where(id_column.in_(chosen.get(item_type, [])))

    statuses = settings.statuses_for_services() if chosen is None else SELECTABLE_STATUSES

    # --- services and addons --------------------------------------------------------------
    s_driving = Service.next_invoice_date if continuous else Service.next_due_date
    services = [r for r in session.execute(restrict(
        select(Service.id, Service.client_id, Service.amount, Service.billing_cycle, Service.payment_method,
               s_driving.label("due"), Service.due_day, Service.taxed, Service.domain,
               func.coalesce(Product.name, Service.name).label("name"))
        .outerjoin(Product, Product.id == Service.product_id)
        .where(among(session, Service.client_id, ids), Service.status.in_(statuses),
               Service.billing_cycle.in_(RECURRING), s_driving.is_not(None), s_driving <= horizon),
        ItemType.SERVICE, Service.id)) if window.admits(r.due, r.billing_cycle)]
    a_driving = Addon.next_invoice_date if continuous else Addon.next_due_date
    addons = [r for r in session.execute(restrict(
        select(Addon.id, Addon.client_id, Addon.service_id, Addon.name, Addon.amount, Addon.billing_cycle,
               Addon.payment_method, a_driving.label("due"), Addon.due_day, Addon.taxed)
        .where(among(session, Addon.client_id, ids), Addon.status.in_(statuses), Addon.billing_cycle.in_(RECURRING),
               a_driving.is_not(None), a_driving <= horizon), ItemType.ADDON, Addon.id))
        if window.admits(r.due, r.billing_cycle)]
    # Parents of the addons and cancellation requests, only for the candidates found.
    service_ids = {r.id for r in services} | {r.service_id for r in addons}
    cancelling = set(session.execute(select(CancelRequest.service_id).where(
        among(session, CancelRequest.service_id, service_ids))).scalars()) if service_ids else set()
    parents = {r.id: r for r in session.execute(
        select(Service.id, Service.domain, func.coalesce(Product.name, Service.name).label("name"))
        .outerjoin(Product, Product.id == Service.product_id)
        .where(among(session, Service.id, {r.service_id for r in addons})))} if addons else {}
    candidates, service_by_domain = service_items(services, cancelling)
    candidates += addon_items(addons, parents, cancelling)

    # --- domains --------------------------------------------------------------------------
    d_driving = Domain.next_invoice_date if continuous else Domain.next_due_date
    d_statuses = settings.domain_invoiceable_statuses if chosen is None else SELECTABLE_DOMAIN_STATUSES
    domains = session.execute(restrict(
        select(Domain.id, Domain.client_id, Domain.domain, Domain.amount, Domain.billing_cycle,
               Domain.payment_method, d_driving.label("due"), Domain.due_day, Domain.taxed)
        .where(among(session, Domain.client_id, ids), Domain.status.in_(d_statuses),
               Domain.billing_cycle.in_(RECURRING), Domain.do_not_renew.is_(False), d_driving.is_not(None),
               d_driving <= horizon),
        ItemType.DOMAIN, Domain.id)).all()
    candidates += domain_items(domains, service_by_domain, window)

    # --- billable items -------------------------------------------------------------------
    billables = session.execute(restrict(
        select(BillableItem.id, BillableItem.client_id, BillableItem.description, BillableItem.amount,
               BillableItem.invoice_action, BillableItem.due_date, BillableItem.recur_every,
               BillableItem.recur_cycle, BillableItem.recur_for, BillableItem.invoice_count,
               BillableItem.payment_method, BillableItem.taxed)
        .where(among(session, BillableItem.client_id, ids), BillableItem.invoice_action.in_(BILLABLE_ACTIONS)),
        ItemType.BILLABLE, BillableItem.id)).all()
    candidates += billable_items(billables, window)

    # --- drop what is already billed ----------------------------------------------------------
    keep_unbilled(candidates, _billed_periods_of(session, [c.line for c in candidates], due.billed_on), due)
    return due


# --- the rules: pure functions over the rows the queries read ---------------------------------

#: The billable items' invoice actions that invoice them (the others wait for an admin).
BILLABLE_ACTIONS = (InvoiceAction.NEXT_RUN, InvoiceAction.NEXT_INVOICE, InvoiceAction.DUE_DATE, InvoiceAction.RECUR)


def service_items(services: Sequence[Any], cancelling: Collection[int]
                  ) -> tuple[list[_Candidate], dict[tuple[int, str], tuple[str, int]]]:
    """A line per service in the window that has no cancellation request, named after its
    product and domain; and which service line each (client, domain name) may ride with."""
    candidates: list[_Candidate] = []
    service_by_domain: dict[tuple[int, str], tuple[str, int]] = {}
    for r in services:
        if r.id in cancelling:
            continue
        name = r.name or f"Service #{r.id}"
        line, upd = _recurring_line(ItemType.SERVICE, r.id, f"{name} - {r.domain}" if r.domain else name,
                                    r.amount, r.taxed, r.due, r.billing_cycle, r.due_day, r.payment_method)
        candidates.append(_Candidate(r.client_id, line, upd))
        if r.domain:
            service_by_domain.setdefault((r.client_id, r.domain.lower()), line.key)
    return candidates, service_by_domain


def addon_items(addons: Sequence[Any], parents: dict[int, Any], cancelling: Collection[int]) -> list[_Candidate]:
    """A line per addon in the window whose service has no cancellation request, attached to
    its service's line and named after it."""
    candidates = []
    for r in addons:
        if r.service_id in cancelling:
            continue
        parent = parents.get(r.service_id)
        owner = (f"{parent.name} - {parent.domain}" if parent.domain else parent.name) if parent else ""
        owner = owner or f"Service #{r.service_id}"
        line, upd = _recurring_line(ItemType.ADDON, r.id, f"Addon: {r.name} ({owner})", r.amount, r.taxed, r.due,
                                    r.billing_cycle, r.due_day, r.payment_method,
                                    attach_to=(ItemType.SERVICE, r.service_id))
        candidates.append(_Candidate(r.client_id, line, upd))
    return candidates


def domain_items(domains: Sequence[Any], service_by_domain: dict[tuple[int, str], tuple[str, int]],
                 window: Window) -> list[_Candidate]:
    """A renewal line per domain in its (domain) window, riding with the service of the same
    name (case-insensitive) if the client has one due."""
    candidates = []
    for r in domains:
        if not window.admits(r.due, r.billing_cycle, domain=True):
            continue
        months = CYCLE_MONTHS[r.billing_cycle]  # type: ignore[index]
        period = f"{months // 12} Year/s" if months >= 12 else f"{months} Month/s"
        line, upd = _recurring_line(ItemType.DOMAIN, r.id, f"Domain Renewal - {r.domain} - {period}", r.amount,
                                    r.taxed, r.due, r.billing_cycle, r.due_day, r.payment_method,
                                    attach_to=service_by_domain.get((r.client_id, r.domain.lower())))
        candidates.append(_Candidate(r.client_id, line, upd))
    return candidates


def billable_items(items: Sequence[Any], window: Window) -> list[_Candidate]:
    """A line per billable item its invoice action invoices now: a recurring one until its
    count is reached (moving its due date on by its period), the others once; by due date
    (and recurring ones) only within ``invoice_generation_days``, unless selected."""
    candidates = []
    limit = window.as_of + timedelta(days=window.settings.invoice_generation_days)
    for r in items:
        if r.invoice_action == InvoiceAction.RECUR:
            exhausted = bool(r.recur_for) and r.invoice_count >= r.recur_for
            if exhausted or r.recur_every < 1 or r.recur_cycle not in RECUR_UNITS:
                continue
            if not window.selected and r.due_date > limit:
                continue
            values = {"invoice_count": r.invoice_count + 1,
                      "due_date": advance_period(r.due_date, r.recur_every, r.recur_cycle)}
        else:
            if r.invoice_count > 0:
                continue
            if r.invoice_action == InvoiceAction.DUE_DATE and not window.selected and r.due_date > limit:
                continue
            values = {"invoice_count": 1}
        rides = r.invoice_action == InvoiceAction.NEXT_INVOICE and not window.selected
        line = PlannedItem(ItemType.BILLABLE, r.id, r.description, Decimal(r.amount), bool(r.taxed), r.due_date,
                           r.payment_method, rides_next_invoice=rides)
        candidates.append(_Candidate(r.client_id, line, ThingUpdate(ItemType.BILLABLE, r.id, values)))
    return candidates


def keep_unbilled(candidates: Sequence[_Candidate], billed: _BilledPeriods, due: DueThings) -> None:
    """Add to ``due`` the candidates whose period is not billed yet (or only by a Cancelled
    invoice, which the new one takes over), and, on a billing day, only the period the thing
    was billed for that day if any: one period per thing per billing day."""
    for c in candidates:
        key = (c.line.item_type, c.line.item_id, c.line.due_date)
        status = billed.periods.get(key)
        if status is not None and status != InvoiceStatus.CANCELLED:
            continue  # already billed for this due date
        if billed.that_day.get(c.line.key, key[2]) != key[2]:
            # One period per thing per billing day, however often the day is run: only the
            # period billed that day (by an invoice since Cancelled) may be billed again.
            continue
        if status == InvoiceStatus.CANCELLED:
            due.cancelled_periods.add(key)
        due.add(c.client_id, c.line, c.update)


@dataclass(slots=True)
class _BilledPeriods:
    #: Status of the invoice holding each (type, id, due date) billed period found.
    periods: dict[tuple[str, int, date], str] = field(default_factory=dict)
    #: The due date each thing was billed for on the billing day (by any invoice).
    that_day: dict[tuple[str, int], date] = field(default_factory=dict)


def _billed_periods_of(session: Session, lines: Sequence[PlannedItem], billed_on: date | None) -> _BilledPeriods:
    """The billed periods on each item's (type, id, due date) and, with ``billed_on``, the one its
    thing took on that billing day, with the status of the invoice holding each: one statement
    per thing type, of exact index look-ups (``store.billed_periods.billed_periods_of`` says how)."""
    found = _BilledPeriods()
    if not lines:
        return found
    by_type: dict[str, list[PlannedItem]] = {}
    for ln in lines:
        by_type.setdefault(ln.item_type, []).append(ln)
    keys_by_type = {item_type: [(ln.item_id, ln.due_date) for ln in group] for item_type, group in by_type.items()}
    rows = billed_periods_of(session, BilledPeriod.__table__, Invoice.__table__, keys_by_type, billed_on)
    for item_type, item_id, due_date, day, status in rows:
        found.periods[(item_type, item_id, due_date)] = status
        if billed_on is not None and day == billed_on:
            found.that_day[(item_type, item_id)] = due_date
    return found


#: Invoice selected items: an admin may invoice anything that is not over.
SELECTABLE_STATUSES = ("Pending", "Active", "Suspended")
SELECTABLE_DOMAIN_STATUSES = ("Pending", "Pending Transfer", "Active", "Grace", "Redemption", "Expired")
