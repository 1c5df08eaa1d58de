"""Installation settings (SPEC §2), read from the shared ``settings`` table.

Each row is ``name`` -> JSON ``value``; a missing row means the default below. Money values are
JSON strings ("10.00"), lists are JSON arrays, per-cycle overrides a JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .errors import ValidationError
from .models import Setting


@dataclass(frozen=True)
class BillingSettings:
    invoice_generation_days: int = 14
    #: {"Annually": 30}: a different number of days for a billing cycle.
    invoice_generation_days_by_cycle: dict[str, int] = field(default_factory=dict)
    #: None = same as invoice_generation_days.
    domain_invoice_generation_days: int | None = None
    invoiceable_statuses: tuple[str, ...] = ("Active", "Pending", "Suspended")
    continuous_invoiceable_statuses: tuple[str, ...] = ("Active", "Suspended")
    domain_invoiceable_statuses: tuple[str, ...] = ("Active", "Pending", "Pending Transfer", "Grace")
    continuous_invoice_generation: bool = False
    auto_apply_credit: bool = True
    unpaid_reminder_days: int = 7
    first_overdue_reminder_days: int = 1
    second_overdue_reminder_days: int = 8
    third_overdue_reminder_days: int = 15
    late_fee_days: int = 0
    late_fee_type: str = "percentage"
    late_fee_amount: Decimal = Decimal("0")
    late_fee_minimum: Decimal = Decimal("0")
    late_fee_taxed: bool = False
    card_capture_days_before_due: int = 0
    card_capture_retry_weeks: int = 0
    card_capture_attempt_once: bool = False
    daily_run_time: str = "09:00"
    add_funds_minimum: Decimal = Decimal("10")
    add_funds_maximum: Decimal = Decimal("100")
    add_funds_maximum_balance: Decimal = Decimal("300")
    phone_number_formatting: bool = True
    password_reset_validity_hours: int = 2
    #: At most this many password-reset links per rolling hour for the whole installation (all
    #: users together), besides the per-user limit; further requests send nothing.
    password_reset_installation_limit: int = 100
    #: "exclusive" (prices before tax) or "inclusive" (prices include tax).
    tax_type: str = "exclusive"
    #: Level 2 tax charged on subtotal + tax 1.
    tax_l2_compound: bool = False
    company_name: str = "Example Hosting"
    system_url: str = "https://billing.example.com/"

    def generation_days(self, cycle: str, *, domain: bool = False) -> int:
        """Days before the due date that a thing of ``cycle`` is invoiced."""
        if domain and self.domain_invoice_generation_days is not None:
            return self.domain_invoice_generation_days
        return self.invoice_generation_days_by_cycle.get(cycle, self.invoice_generation_days)

    def max_generation_days(self) -> int:
        days = [self.invoice_generation_days, *self.invoice_generation_days_by_cycle.values()]
        if self.domain_invoice_generation_days is not None:
            days.append(self.domain_invoice_generation_days)
        return max(days)

    def statuses_for_services(self) -> tuple[str, ...]:
        if self.continuous_invoice_generation:
            return self.continuous_invoiceable_statuses
        return self.invoiceable_statuses


_FIELDS = {f.name: f for f in fields(BillingSettings)}


def _whole(raw: Any) -> int:
    """A whole number: an int, or a string of digits; never a float or a bool."""
    if isinstance(raw, bool) or isinstance(raw, float):
        raise TypeError
    if isinstance(raw, str) and not raw.strip().lstrip("-").isdigit():
        raise ValueError
    return int(raw)


def _convert(name: str, raw: Any) -> Any:
    default = getattr(BillingSettings(), name)
    try:
        if isinstance(default, bool):
            if not isinstance(raw, bool):
                raise TypeError
            return raw
        if isinstance(default, Decimal):
            if isinstance(raw, float | bool) or not isinstance(raw, int | str):
                raise TypeError
            value = Decimal(str(raw))
            if not value.is_finite():
                raise ValueError
            return value
        if isinstance(default, tuple):
            if not isinstance(raw, list | tuple) or not all(isinstance(v, str) for v in raw):
                raise TypeError
            return tuple(raw)
        if isinstance(default, dict):
            if not isinstance(raw, dict):
                raise TypeError
            return {str(k): _whole(v) for k, v in raw.items()}
        if name == "domain_invoice_generation_days":
            return None if raw is None else _whole(raw)
        if isinstance(default, int):
            return _whole(raw)
        if not isinstance(raw, str):
            raise TypeError
        return raw
    except (TypeError, ValueError, ArithmeticError):
        raise ValidationError(f"settings.{name}", raw, f"is not a valid value (default {default!r})") from None


def settings_from_mapping(values: dict[str, Any]) -> BillingSettings:
    """Settings from already-decoded values; unknown names are ignored (other apps' settings)."""
    return BillingSettings(**{k: _convert(k, v) for k, v in values.items() if k in _FIELDS})


def load_settings(session: Session) -> BillingSettings:
    rows = session.execute(select(Setting.name, Setting.value)).all()
    values: dict[str, Any] = {}
    for name, value in rows:
        if name not in _FIELDS:
            continue
        try:
            values[name] = json.loads(value)
        except json.JSONDecodeError:
            raise ValidationError(f"settings.{name}", value, "is not valid JSON") from None
    return settings_from_mapping(values)


def save_settings(session: Session, **values: Any) -> None:
    """Write settings (used by the CLI, the demo and tests). Validates before writing."""
    for name in values:
        if name not in _FIELDS:
            raise ValidationError("settings", name, "is not a known setting")
    settings_from_mapping({k: str(v) if isinstance(v, Decimal) else v for k, v in values.items()})
    for name, value in values.items():
        encoded = json.dumps(str(value) if isinstance(value, Decimal) else value)
        row = session.get(Setting, name)
        if row is None:
            session.add(Setting(name=name, value=encoded))
        else:
            row.value = encoded
    session.flush()
