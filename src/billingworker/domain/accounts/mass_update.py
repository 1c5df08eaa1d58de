"""Mass update of one client's things (SPEC §9): status, payment method, override auto-suspend,
recurring amount, billing cycle, next due date, a server-module command each, and the prorata
invoice of moved due dates. All in the caller's transaction: all or nothing.

Order of work: lock the client row, read and check every value, lock the things (services,
addons, domains, each in id order), check they are the client's, compute the prorata, then
write the changes, the ``module_commands`` rows and the invoice. Nothing is written before
every value has been checked, and the caller's rollback undoes everything if anything fails.
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
from ..money import ZERO, parse_money
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
    second invoice.
    """
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

    result = MassUpdateResult()
    if prorating:
        labels = _labels(session, things)
        result.prorata_items = prorata_items(
            [_prorata_thing(key, things[key], labels[key], parsed) for key in wanted], client.minor_units)
        result.prorata_total = prorata_total(result.prorata_items)
    for key in wanted:
        _apply(things[key], parsed, as_of)
        result.updated.append(key)
    session.flush()
    if parsed.module_command is not None:
        result.commands = queue_module_commands(session, [
            NewCommand(t, i, client_id, parsed.module_command, parsed.module_params, f"{request_key}:{t}:{i}")
            for t, i in wanted], now=now)
    if result.prorata_total > 0:
        method = next((things[(ln.item_type, ln.item_id)].payment_method for ln in result.prorata_items), "")
        _invoice_prorata(session, client, result, method, as_of=as_of, queue_email=queue_email)
    return result


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


def _apply(thing: Any, changes: ThingChanges, as_of: date) -> None:
    if changes.status is not None:
        if (isinstance(thing, Service) and changes.status in (ThingStatus.TERMINATED, ThingStatus.CANCELLED)
                and thing.status != changes.status and thing.termination_date is None):
            thing.termination_date = as_of
        thing.status = changes.status
    if changes.payment_method is not None:
        thing.payment_method = changes.payment_method
    if changes.override_auto_suspend is not None:
        thing.override_auto_suspend = changes.override_auto_suspend
    if changes.recurring_amount is not None:
        thing.amount = changes.recurring_amount
    if changes.billing_cycle is not None:
        thing.billing_cycle = changes.billing_cycle
    if changes.next_due_date is not None:
        # As WHMCS does: the next invoice is for the new date (continuous invoicing is driven by
        # next_invoice_date), and the admin's date is the new anchor day (cycles.anchor_day).
        thing.next_due_date = changes.next_due_date
        thing.next_invoice_date = changes.next_due_date
        thing.due_day = changes.next_due_date.day


def _invoice_prorata(session: Session, client: ClientInfo, result: MassUpdateResult, payment_method: str, *,
                     as_of: date, queue_email: bool) -> None:
    """One invoice with every prorata line, through the same machinery as renewals: tax per the
    things' taxed flag, credit auto-applied, the number taken last, the "invoice created" email."""
    settings = load_settings(session)
    tax = tax_context(TaxRules.load(session), client, settings)
    lines = [PlannedItem(ItemType.PRORATA, pl.item_id, pl.description, pl.amount, pl.taxed, pl.period_start,
                         payment_method, pl.period_end) for pl in result.prorata_items]
    plan = InvoicePlan(client_id=client.id, currency_id=client.currency_id, date_created=as_of, date_due=as_of,
                       payment_method=payment_method, items=tuple(lines),
                       totals=totals_for(lines, tax, client.minor_units))
    [plan] = (apply_credit_to_plans([plan], client.credit_balance, as_of) if settings.auto_apply_credit
              else [settle_if_free(plan, as_of)])
    stored = write_items_and_periods(session, [plan])
    if queue_email:
        result.email_ids = queue_emails(session, [QueuedEmail("invoice_created", client.id,
                                                              {"invoice_id": s.id}, f"invoice_created:{s.id}")
                                                  for s in stored])
    write_invoice_rows(session, stored, source=SOURCE)
    [done] = stored
    if done.plan.status == InvoiceStatus.PAID:
        settle_paid_invoices(session, [done.id])
    result.invoice_id, result.invoice_number = done.id, done.number


__all__ = ["MASS_UPDATE_TYPES", "MassUpdateResult", "ThingChanges", "mass_update", "parse_changes"]
