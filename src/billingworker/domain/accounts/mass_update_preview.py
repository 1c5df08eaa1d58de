"""A mass update's preview (SPEC §9): the changes, the prorata lines and invoice, and the module
commands that ``mass_update`` would make, by the update's own plan (``plan_mass_update``), with
nothing written. Shown by ``billingworker mass-update --preview``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..billing.invoice_plan import InvoicePlan
from ..billing.prorata import ProrataItem
from ..models import Currency
from ..money import round_money
from .mass_update import ThingUpdate, plan_mass_update


@dataclass(frozen=True)
class MassUpdatePreview:
    """What a mass update would do, from the plan the update itself carries out."""

    client_id: int
    #: The client's currency code (the prorata amounts are in it); None without a currency.
    currency: str | None
    #: Decimal places of the client's currency (amounts are shown to it).
    minor_units: int
    updates: tuple[ThingUpdate, ...]
    prorata_items: tuple[ProrataItem, ...]
    prorata_total: Decimal
    invoice: InvoicePlan | None
    #: (type, id, command) of each module command that a new request would queue.
    commands: tuple[tuple[str, int, str], ...]

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly (amounts and dates as strings)."""
        inv = self.invoice

        def money(amount: Decimal) -> str:
            return str(round_money(amount, self.minor_units))

        def plain(value: Any) -> Any:  # a field's value: money as money, dates as ISO text
            if isinstance(value, Decimal):
                return money(value)
            return value.isoformat() if isinstance(value, date) else value

        return {
            "client_id": self.client_id, "currency": self.currency,
            "updates": [{"type": u.item_type, "id": u.item_id, "label": u.label,
                         "changes": {k: {"before": plain(b), "after": plain(a)} for k, (b, a) in u.fields.items()}}
                        for u in self.updates],
            "prorata_items": [{"type": ln.item_type, "id": ln.item_id, "description": ln.description,
                               "period_start": ln.period_start.isoformat(), "period_end": ln.period_end.isoformat(),
                               "days": ln.days, "amount": money(ln.amount), "taxed": ln.taxed}
                              for ln in self.prorata_items],
            "prorata_total": money(self.prorata_total),
            "invoice": None if inv is None else {
                "date_created": inv.date_created.isoformat(), "date_due": inv.date_due.isoformat(),
                "payment_method": inv.payment_method, "subtotal": money(inv.totals.subtotal),
                "tax1": money(inv.totals.tax1), "tax2": money(inv.totals.tax2), "total": money(inv.totals.total),
                "credit_applied": money(inv.credit_applied), "balance_due": money(inv.balance_due),
                "status": str(inv.status)},
            "module_commands": [{"type": t, "id": i, "command": c} for t, i, c in self.commands],
        }


def preview_mass_update(session: Session, client_id: int, items: Sequence[Any], changes: Any, *,
                        create_prorata_invoice: bool = False, as_of: date) -> MassUpdatePreview:
    """The changes, prorata lines, invoice and module commands a mass update would make, by the
    update's own plan (``plan_mass_update``); writes nothing. It takes the update's row locks
    (client, then things), which the caller's rollback or commit releases; bad input raises what
    the update would raise."""
    plan = plan_mass_update(session, client_id, items, changes, create_prorata_invoice=create_prorata_invoice,
                            as_of=as_of, request_key="preview")
    currency = (session.scalar(select(Currency.code).where(Currency.id == plan.client.currency_id))
                if plan.client.currency_id is not None else None)
    return MassUpdatePreview(
        client_id=client_id, currency=currency, minor_units=plan.client.minor_units, updates=plan.updates,
        prorata_items=plan.prorata_items, prorata_total=plan.prorata_total, invoice=plan.invoice,
        commands=tuple((c.item_type, c.item_id, c.command) for c in plan.commands))
