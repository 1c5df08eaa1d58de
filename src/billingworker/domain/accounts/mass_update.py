"""Mass update of one client's things (SPEC §9): status, payment method, override auto-suspend,
recurring amount, billing cycle, next due date, a server-module command each, and the prorata
invoice of moved due dates. All in the caller's transaction: all or nothing.

Order of work: lock the client row, read and check every value, lock the things (services,
addons, domains, each in id order), check they are the client's, compute the prorata, then
write the changes, the ``module_commands`` rows and the invoice. Nothing is written before
every value has been checked, and the caller's rollback undoes everything if anything fails.

The deciding and the writing are two steps: ``plan_mass_update`` decides everything (and writes
nothing), ``write_mass_update`` carries the plan out. ``mass_update`` is both;
``preview_mass_update`` is the first only, so a preview shows what the update does by its own
code (the operator's ``billingworker mass-update --preview``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...db import for_update
from ...store.arrays import among
from ..billing.due_invoices import tax_context
from ..billing.invoice_plan import (
    ClientInfo,
    InvoicePlan,
    PlannedItem,
    apply_credit_to_plans,
    settle_if_free,
    totals_for,
)
from ..billing.invoice_store import lock_clients, write_invoice_rows, write_items_and_periods
from ..billing.prorata import ProrataItem, ProrataThing, prorata_items, prorata_total
from ..billing.tax import TaxRules
from ..billing.thing_removal import selected_things
from ..cycles import parse_cycle
from ..errors import NotFound, ValidationError
from ..messaging.outbox import QueuedEmail, queue_emails
from ..models import (
    Addon,
    ClientStatus,
    Domain,
    DomainStatus,
    InvoiceStatus,
    ItemType,
    Product,
    Service,
    ThingStatus,
)
from ..money import ZERO, parse_money, within_the_books
from ..payments.payments import settle_paid_invoices
from ..settings import load_settings
from .module_commands import (
    MODULE_ITEM_TYPES,
    NewCommand,
    QueuedCommand,
    parse_module_command,
    parse_module_params,
    queue_module_commands,
)

#: What a mass update may select (billable items have no status, cycle or module).
MASS_UPDATE_TYPES: tuple[str, ...] = MODULE_ITEM_TYPES
_TABLES = {ItemType.SERVICE: Service, ItemType.ADDON: Addon, ItemType.DOMAIN: Domain}
#: Credit-history source of credit applied to a prorata invoice.
SOURCE = "job:mass_update"
_KEYS = ("status", "payment_method", "override_auto_suspend", "recurring_amount", "billing_cycle",
         "next_due_date", "module_command", "module_params")


@dataclass(frozen=True)
class ThingChanges:
    """The checked changes; ``None`` = unchanged."""

    status: str | None = None
    payment_method: str | None = None
    override_auto_suspend: bool | None = None
    recurring_amount: Decimal | None = None
    billing_cycle: str | None = None
    next_due_date: date | None = None
    module_command: str | None = None
    module_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def changes_fields(self) -> bool:
        return any(v is not None for v in (self.status, self.payment_method, self.override_auto_suspend,
                                           self.recurring_amount, self.billing_cycle, self.next_due_date))


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def parse_changes(raw: Any, *, minor_units: int = 2) -> ThingChanges:
    """``changes`` as sent by the admin panel: absent, ``null`` or blank keys leave a field as it
    is; an unknown key, or a value of the wrong shape, is a ``ValidationError`` naming it."""
    if not isinstance(raw, Mapping):
        raise ValidationError("changes", raw, "must be a JSON object of the fields to change")
    for key in raw:
        if key not in _KEYS:
            raise ValidationError(f"changes.{key}", raw[key], f"is not a field a mass update changes "
                                  f"(one of {', '.join(_KEYS)})")
    v = {k: (None if _blank(raw.get(k)) else raw.get(k)) for k in _KEYS}
    out: dict[str, Any] = {}
    if v["status"] is not None:
        known = {s.value for s in ThingStatus} | {s.value for s in DomainStatus}
        if not isinstance(v["status"], str) or v["status"].strip() not in known:
            raise ValidationError("changes.status", v["status"], f"is not a status (one of {', '.join(sorted(known))})")
        out["status"] = v["status"].strip()
    if v["payment_method"] is not None:
        if not isinstance(v["payment_method"], str) or len(v["payment_method"].strip()) > 50:
            raise ValidationError("changes.payment_method", v["payment_method"],
                                  "must be a payment gateway's name of at most 50 characters")
        out["payment_method"] = v["payment_method"].strip()
    if v["override_auto_suspend"] is not None:
        if not isinstance(v["override_auto_suspend"], bool):
            raise ValidationError("changes.override_auto_suspend", v["override_auto_suspend"], "must be true or false")
        out["override_auto_suspend"] = v["override_auto_suspend"]
    if v["recurring_amount"] is not None:
        out["recurring_amount"] = parse_money("changes.recurring_amount", v["recurring_amount"],
                                              minor_units=minor_units, allow_zero=True)
    if v["billing_cycle"] is not None:
        if not isinstance(v["billing_cycle"], str):
            raise ValidationError("changes.billing_cycle", v["billing_cycle"], "must be a billing cycle name")
        out["billing_cycle"] = parse_cycle(v["billing_cycle"].strip(), "changes.billing_cycle").value
    if isinstance(v["next_due_date"], date) and not isinstance(v["next_due_date"], datetime):
        out["next_due_date"] = v["next_due_date"]  # a domain caller's date: as good as its ISO string
    elif v["next_due_date"] is not None:
        try:
            out["next_due_date"] = date.fromisoformat(v["next_due_date"])
        except (TypeError, ValueError):
            raise ValidationError("changes.next_due_date", v["next_due_date"],
                                  "is not an ISO date string YYYY-MM-DD") from None
    if v["module_command"] is not None:
        out["module_command"] = parse_module_command("changes.module_command", v["module_command"])
    params = parse_module_params("changes.module_params", raw.get("module_params") or None)
    if params and "module_command" not in out:
        raise ValidationError("changes.module_params", params, "needs a module_command")
    changes = ThingChanges(**out, module_params=params)
    if not changes.changes_fields and changes.module_command is None:
        raise ValidationError("changes", dict(raw), "changes nothing: give at least one field or a module_command")
    return changes


@dataclass
class MassUpdateResult:
    updated: list[tuple[str, int]] = field(default_factory=list)
    commands: list[QueuedCommand] = field(default_factory=list)
    prorata_items: list[ProrataItem] = field(default_factory=list)
    #: The sum of the prorata lines (before tax); invoiced only when positive.
    prorata_total: Decimal = ZERO
    invoice_id: int | None = None
    invoice_number: int | None = None
    email_ids: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly: the job's log line and its receipt."""
        return {"updated": [f"{t}:{i}" for t, i in self.updated], "module_command_ids": [c.command_id
                for c in self.commands], "prorata_total": str(self.prorata_total), "invoice_id": self.invoice_id,
                "invoice_number": self.invoice_number}


@dataclass(frozen=True)
class ThingUpdate:
    """One selected thing and what the update changes on it: ``fields`` maps each column that
    takes a new value to (before, after); a field already at its new value is left out."""

    item_type: str
    item_id: int
    label: str
    fields: Mapping[str, tuple[Any, Any]]


@dataclass(frozen=True)
class MassUpdatePlan:
    """Everything a mass update will write, decided before anything is written: what the update
    (``write_mass_update``) carries out and what the preview (``preview_mass_update``) shows."""

    client: ClientInfo
    changes: ThingChanges
    #: The selected things, once each, in the order given.
    wanted: tuple[tuple[str, int], ...]
    #: The locked rows of the selected things.
    things: Mapping[tuple[str, int], Any]
    updates: tuple[ThingUpdate, ...]
    prorata_items: tuple[ProrataItem, ...]
    prorata_total: Decimal
    #: The prorata invoice (credit applied, Paid when covered), when the sum is positive.
    invoice: InvoicePlan | None
    commands: tuple[NewCommand, ...]


def plan_mass_update(session: Session, client_id: int, items: Sequence[Any], changes: Any, *,
                     create_prorata_invoice: bool = False, as_of: date, request_key: str) -> MassUpdatePlan:
    """Check every value, lock the client row then the things, and decide every change, line and
    command of the update; writes nothing. ``ValidationError``/``NotFound`` naming the field for
    bad input (items in the sender's order: ``items[n]``)."""
    # Checked in the order given (so that "items[n]" names the sender's n-th item), done once each.
    requested = selected_things(items)
    wanted = list(dict.fromkeys(requested))
    if not wanted:
        raise ValidationError("items", [], "must name at least one thing")
    for n, (item_type, _) in enumerate(requested):
        if item_type not in MASS_UPDATE_TYPES:
            raise ValidationError(f"items[{n}].type", item_type, f"is not one of {', '.join(MASS_UPDATE_TYPES)}")
    client = lock_clients(session, [client_id]).get(client_id)
    if client is None:
        raise NotFound("client_id", client_id, "client")
    parsed = parse_changes(changes, minor_units=client.minor_units)
    prorating = create_prorata_invoice and parsed.next_due_date is not None
    if prorating:
        _check_invoiceable(client)
    things = _lock_things(session, client_id, requested)
    _check_statuses(parsed, requested)

    labels = _labels(session, things)
    lines: list[ProrataItem] = []
    if prorating:
        lines = prorata_items([_prorata_thing(key, things[key], labels[key], parsed) for key in wanted],
                              client.minor_units)
    total = prorata_total(lines)
    invoice = None
    if total > 0:
        first = things[(lines[0].item_type, lines[0].item_id)]
        # The payment method after the update, as the renewal of the thing would have it.
        method = parsed.payment_method if parsed.payment_method is not None else first.payment_method
        invoice = _plan_prorata_invoice(session, client, lines, method, as_of=as_of)
    commands = ()
    if parsed.module_command is not None:
        commands = tuple(NewCommand(t, i, client_id, parsed.module_command, parsed.module_params,
                                    f"{request_key}:{t}:{i}") for t, i in wanted)
    return MassUpdatePlan(
        client=client, changes=parsed, wanted=tuple(wanted), things=things,
        updates=tuple(ThingUpdate(key[0], key[1], labels[key], _new_values(things[key], parsed, as_of))
                      for key in wanted),
        prorata_items=tuple(lines), prorata_total=total, invoice=invoice, commands=commands)


def write_mass_update(session: Session, plan: MassUpdatePlan, *, now: datetime,
                      queue_email: bool = True) -> MassUpdateResult:
    """Carry out ``plan`` in the caller's transaction: the things' new values, the module
    commands (once per request key), the prorata invoice and its email."""
    result = MassUpdateResult(prorata_items=list(plan.prorata_items), prorata_total=plan.prorata_total)
    for update in plan.updates:
        thing = plan.things[(update.item_type, update.item_id)]
        for name, (_, after) in update.fields.items():
            setattr(thing, name, after)
        result.updated.append((update.item_type, update.item_id))
    session.flush()
    if plan.commands:
        result.commands = queue_module_commands(session, list(plan.commands), now=now)
    if plan.invoice is not None:
        _write_prorata_invoice(session, plan.invoice, result, queue_email=queue_email)
    return result


def mass_update(session: Session, client_id: int, items: Sequence[Any], changes: Any, *,
                create_prorata_invoice: bool = False, as_of: date, now: datetime, request_key: str,
                queue_email: bool = True) -> MassUpdateResult:
    """Apply ``changes`` to every selected thing of the client; the caller commits.

    ``items``: ``(type, id)`` pairs or ``{"type": ..., "id": ...}`` objects.

    Locks the client row, then the things. Every item must be the client's (else
    ``ValidationError``/``NotFound``, nothing written). ``request_key`` (the job's run-once key)
    keys the module commands, ``<request_key>:<type>:<id>``: written once however often this runs.
    With ``create_prorata_invoice`` and a new next due date, the prorata of each thing (its amount
    and cycle *after* the update, from its current next due date to the new one) goes on one
    invoice, due ``as_of``, if the sum is positive. Run again, the dates no longer move: no
    second invoice. The plan (``plan_mass_update``) is the one ``preview_mass_update`` shows.
    """
    plan = plan_mass_update(session, client_id, items, changes, create_prorata_invoice=create_prorata_invoice,
                            as_of=as_of, request_key=request_key)
    return write_mass_update(session, plan, now=now, queue_email=queue_email)


def _check_invoiceable(client: ClientInfo) -> None:
    if client.status == ClientStatus.CLOSED:
        raise ValidationError("client_id", client.id, "is a Closed client and cannot be invoiced a prorata")
    if client.currency_id is None:
        raise ValidationError("currency_id", None, "is required to invoice a prorata: the client has no currency")


def _lock_things(session: Session, client_id: int, wanted: Sequence[tuple[str, int]]) -> dict[tuple[str, int], Any]:
    """Lock the selected rows (per type, in id order: one lock order for every job) and check
    that each exists and is the client's."""
    found: dict[tuple[str, int], Any] = {}
    for item_type in MASS_UPDATE_TYPES:
        ids = sorted({i for t, i in wanted if t == item_type})
        if not ids:
            continue
        table = _TABLES[item_type]
        for row in session.execute(for_update(select(table).where(among(session, table.id, ids))
                                              .order_by(table.id))).scalars():
            found[(item_type, row.id)] = row
    for n, key in enumerate(wanted):
        row = found.get(key)
        if row is None:
            raise NotFound(f"items[{n}].id", key[1], key[0])
        if row.client_id != client_id:
            raise ValidationError(f"items[{n}].id", key[1], f"is a {key[0]} of another client, not of client "
                                  f"{client_id}")
    return found


def _check_statuses(changes: ThingChanges, wanted: Sequence[tuple[str, int]]) -> None:
    """A status must be one the thing's kind has (domains have their own list)."""
    if changes.status is None:
        return
    services = {s.value for s in ThingStatus}
    domains = {s.value for s in DomainStatus}
    for n, (item_type, item_id) in enumerate(wanted):
        allowed = domains if item_type == ItemType.DOMAIN else services
        if changes.status not in allowed:
            raise ValidationError("changes.status", changes.status,
                                  f"is not a {item_type} status (items[{n}] is {item_type} {item_id}; one of "
                                  f"{', '.join(sorted(allowed))})")


def _labels(session: Session, things: Mapping[tuple[str, int], Any]) -> dict[tuple[str, int], str]:
    """What the invoice line calls each thing, as the renewal lines do."""
    product_ids = {t.product_id for (kind, _), t in things.items() if kind == ItemType.SERVICE and t.product_id}
    products = dict(session.execute(select(Product.id, Product.name).where(
        among(session, Product.id, product_ids))).all()) if product_ids else {}
    labels = {}
    for (kind, item_id), t in things.items():
        if kind == ItemType.SERVICE:
            name = products.get(t.product_id) or t.name or f"Service #{item_id}"
            labels[(kind, item_id)] = f"{name} - {t.domain}" if t.domain else name
        elif kind == ItemType.ADDON:
            labels[(kind, item_id)] = f"Addon: {t.name}"
        else:
            labels[(kind, item_id)] = f"Domain: {t.domain}"
    return labels


def _prorata_thing(key: tuple[str, int], thing: Any, label: str, changes: ThingChanges) -> ProrataThing:
    # The values after the update (WHMCS saves first, then prorates), from the current date.
    assert changes.next_due_date is not None
    return ProrataThing(
        item_type=key[0], item_id=key[1], label=label,
        recurring_amount=changes.recurring_amount if changes.recurring_amount is not None else Decimal(thing.amount),
        billing_cycle=changes.billing_cycle or thing.billing_cycle, current_due_date=thing.next_due_date,
        new_due_date=changes.next_due_date, taxed=bool(thing.taxed))


def _new_values(thing: Any, changes: ThingChanges, as_of: date) -> dict[str, tuple[Any, Any]]:
    """Each column of ``thing`` the update gives a new value: name -> (before, after)."""
    after: dict[str, Any] = {}
    if changes.status is not None:
        if (isinstance(thing, Service) and changes.status in (ThingStatus.TERMINATED, ThingStatus.CANCELLED)
                and thing.status != changes.status and thing.termination_date is None):
            after["termination_date"] = as_of
        after["status"] = changes.status
    if changes.payment_method is not None:
        after["payment_method"] = changes.payment_method
    if changes.override_auto_suspend is not None:
        after["override_auto_suspend"] = changes.override_auto_suspend
    if changes.recurring_amount is not None:
        after["amount"] = changes.recurring_amount
    if changes.billing_cycle is not None:
        after["billing_cycle"] = changes.billing_cycle
    if changes.next_due_date is not None:
        # As WHMCS does: the next invoice is for the new date (continuous invoicing is driven by
        # next_invoice_date), and the admin's date is the new anchor day (cycles.anchor_day).
        after["next_due_date"] = changes.next_due_date
        after["next_invoice_date"] = changes.next_due_date
        after["due_day"] = changes.next_due_date.day
    return {name: (getattr(thing, name), value) for name, value in after.items() if getattr(thing, name) != value}


def _plan_prorata_invoice(session: Session, client: ClientInfo, lines: Sequence[ProrataItem], payment_method: str,
                          *, as_of: date) -> InvoicePlan:
    """The one invoice of every prorata line, planned as renewals are: tax per the things' taxed
    flag, credit auto-applied (Paid when it covers the invoice), created and due ``as_of``."""
    settings = load_settings(session)
    tax = tax_context(TaxRules.load(session), client, settings)
    items = [PlannedItem(ItemType.PRORATA, pl.item_id, pl.description, pl.amount, pl.taxed, pl.period_start,
                         payment_method, pl.period_end) for pl in lines]
    totals = totals_for(items, tax, client.minor_units)
    for amount in [*(it.amount for it in items), totals.total]:  # (huge amounts over decades of prorata)
        within_the_books("changes", str(amount), "the prorata invoice (a line or its total)", amount)
    plan = InvoicePlan(client_id=client.id, currency_id=client.currency_id, date_created=as_of, date_due=as_of,
                       payment_method=payment_method, items=tuple(items), totals=totals)
    [plan] = (apply_credit_to_plans([plan], client.credit_balance, as_of) if settings.auto_apply_credit
              else [settle_if_free(plan, as_of)])
    return plan


def _write_prorata_invoice(session: Session, plan: InvoicePlan, result: MassUpdateResult, *,
                           queue_email: bool) -> None:
    """Write the planned invoice through the same machinery as renewals: the number taken last,
    the credit it spends, the "invoice created" email; a Paid one is settled."""
    stored = write_items_and_periods(session, [plan])
    if queue_email:
        result.email_ids = queue_emails(session, [QueuedEmail("invoice_created", plan.client_id,
                                                              {"invoice_id": s.id}, f"invoice_created:{s.id}")
                                                  for s in stored])
    write_invoice_rows(session, stored, source=SOURCE)
    [done] = stored
    if done.plan.status == InvoiceStatus.PAID:
        settle_paid_invoices(session, [done.id])
    result.invoice_id, result.invoice_number = done.id, done.number


__all__ = ["MASS_UPDATE_TYPES", "MassUpdatePlan", "MassUpdateResult", "ThingChanges", "ThingUpdate", "mass_update",
           "parse_changes", "plan_mass_update", "write_mass_update"]
