"""Installation settings (SPEC §2), read from the shared ``settings`` table.

Each row is ``name`` -> JSON ``value``; a missing row means the default below. Money values are
JSON strings ("10.00"), lists are JSON arrays, per-cycle overrides a JSON object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..clock import TIME_ZONE_INFO
from .errors import ValidationError
from .models import Setting


def installation_zone(session: Session) -> ZoneInfo:
    """The installation's time zone (BILLING_TIME_ZONE), as the session was made with; UTC if none."""
    return ZoneInfo(session.info.get(TIME_ZONE_INFO) or "UTC")


def local_day(session: Session, moment: datetime | date) -> date:
    """The installation's calendar day of a stored instant (SPEC §3: every date is local). A
    naive value is UTC, as every timestamp is stored; a date is already a day."""
    if not isinstance(moment, datetime):
        return moment
    aware = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment
    return aware.astimezone(installation_zone(session)).date()


def local_day_start(session: Session, day: date) -> datetime:
    """The instant (UTC) the installation's ``day`` begins."""
    return datetime.combine(day, time(0), tzinfo=installation_zone(session)).astimezone(UTC)


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
    #: ``late_fee_type`` interest: the annual rate in percent (12 = 12 % a year), simple, actual/365.
    late_fee_interest_rate: Decimal = Decimal("0")
    #: none | amount | percentage: how ``late_fee_interest_cap`` limits the interest of one invoice.
    late_fee_interest_cap_type: str = "none"
    #: The most interest one invoice takes: an amount, or a percentage of its total before interest.
    late_fee_interest_cap: Decimal = Decimal("0")
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


# --- writing: one set of rules for every writer (CLI, console, demo, tests) ----------------------

#: The spellings of ``late_fee_type`` the late-fee task understands (case-insensitive).
LATE_FEE_TYPES = ("percentage", "percent", "fixed", "fixed amount", "interest")
#: How ``late_fee_interest_cap`` caps the interest of one invoice.
INTEREST_CAP_TYPES = ("none", "amount", "percentage")
#: ``late_fee_interest_rate``: percent a year, at most this (and at most 4 decimal places).
MAX_INTEREST_RATE = Decimal("100")
#: ``late_fee_interest_cap`` as a percentage of the invoice total: at most this.
MAX_INTEREST_CAP_PERCENT = Decimal("100")
TAX_TYPES = ("exclusive", "inclusive")
#: Whole-number settings are counts of days, hours or links: 0 .. this, unless their spec says less.
MAX_WHOLE = 2**31 - 1
#: A setting counted in days: ten years. More is no billing rule, and a date that far from today
#: overflows Python's dates (year 9999) in every daily run's arithmetic.
MAX_DAYS = 3650
#: ``card_capture_retry_weeks``: ten years of weekly retries.
MAX_WEEKS = 520
#: ``password_reset_validity_hours``: a year.
MAX_HOURS = 8760
#: Longest text setting (a company name, a URL).
MAX_TEXT = 1000


@dataclass(frozen=True)
class SettingSpec:
    """What a setting holds and means: its kind decides how a value is checked, parsed from an
    operator's text, and shown."""

    name: str
    #: integer, optional integer, boolean, money, percent, time, choice, text, statuses, days by cycle
    kind: str
    description: str
    choices: tuple[str, ...] = ()
    #: The largest whole number an integer (or days by cycle) setting takes.
    maximum: int = MAX_WHOLE

    @property
    def default(self) -> Any:
        return getattr(BillingSettings(), self.name)


def _spec(name: str, kind: str, description: str, choices: tuple[str, ...] = (), *,
          maximum: int | None = None) -> SettingSpec:
    if maximum is None:
        maximum = MAX_DAYS if name.endswith("_days") or kind == "days by cycle" else MAX_WHOLE
    return SettingSpec(name, kind, description, choices, maximum)


#: Every setting, in the order of BillingSettings (docs/schema.md section 5 says the same).
SETTINGS: dict[str, SettingSpec] = {s.name: s for s in (
    _spec("invoice_generation_days", "integer", "Invoice a thing this many days before its due date."),
    _spec("invoice_generation_days_by_cycle", "days by cycle",
          'Per-cycle overrides of invoice_generation_days, e.g. {"Annually": 30}.'),
    _spec("domain_invoice_generation_days", "optional integer",
          "Days for domains; null = as for other things.", maximum=MAX_DAYS),
    _spec("invoiceable_statuses", "statuses", "Service and addon statuses that are invoiced."),
    _spec("continuous_invoiceable_statuses", "statuses", "The same, when continuous generation is on."),
    _spec("domain_invoiceable_statuses", "statuses", "Domain statuses that are invoiced."),
    _spec("continuous_invoice_generation", "boolean",
          "On: invoices keep coming (next_invoice_date); off: the next waits for the last to be paid."),
    _spec("auto_apply_credit", "boolean", "Apply the client's credit balance to new invoices."),
    _spec("unpaid_reminder_days", "integer", "Payment reminder this many days before the due date; 0 = off."),
    _spec("first_overdue_reminder_days", "integer", "First overdue notice, days after the due date; 0 = off."),
    _spec("second_overdue_reminder_days", "integer", "Second overdue notice; 0 = off."),
    _spec("third_overdue_reminder_days", "integer", "Third overdue notice; 0 = off."),
    _spec("late_fee_days", "integer", "Add the late fee this many days after the due date; 0 = off."),
    _spec("late_fee_type", "choice", "percentage (of the invoice total), fixed (late_fee_amount itself) or "
          "interest (late_fee_interest_rate a year on the overdue balance, one line per calendar month).",
          LATE_FEE_TYPES),
    _spec("late_fee_amount", "money", "The percentage (10 = 10 %) or the fixed amount; 0 = no late fees."),
    _spec("late_fee_minimum", "money", "A smaller late fee is raised to this."),
    _spec("late_fee_taxed", "boolean", "Whether the late fee line is taxed."),
    _spec("late_fee_interest_rate", "percent",
          "late_fee_type interest: annual rate in percent (12 = 12 % a year), simple, actual/365; 0 = none."),
    _spec("late_fee_interest_cap_type", "choice",
          "none, amount (late_fee_interest_cap itself) or percentage (of the invoice total before interest).",
          INTEREST_CAP_TYPES),
    _spec("late_fee_interest_cap", "money", "The most interest one invoice takes (amount, or percent up to 100)."),
    _spec("card_capture_days_before_due", "integer", "First card capture this many days before the due date."),
    _spec("card_capture_retry_weeks", "integer", "After a failed capture: 0 = retry daily; N = weekly for N weeks.",
          maximum=MAX_WEEKS),
    _spec("card_capture_attempt_once", "boolean", "One capture attempt per invoice, no retry."),
    _spec("daily_run_time", "time", "Local time (BILLING_TIME_ZONE) of the daily run, HH:MM, 24-hour."),
    _spec("add_funds_minimum", "money", "Smallest add-funds invoice."),
    _spec("add_funds_maximum", "money", "Largest add-funds invoice."),
    _spec("add_funds_maximum_balance", "money", "Credit balance + the added amount may not exceed this."),
    _spec("phone_number_formatting", "boolean", "Store phone numbers as +<country code>.<number>."),
    _spec("password_reset_validity_hours", "integer", "How long a password reset link is valid (hours).",
          maximum=MAX_HOURS),
    _spec("password_reset_installation_limit", "integer",
          "At most this many password reset links per rolling hour, all users together."),
    _spec("tax_type", "choice", "exclusive: prices before tax; inclusive: prices include tax.", TAX_TYPES),
    _spec("tax_l2_compound", "boolean", "Level 2 tax is charged on subtotal + tax 1."),
    _spec("company_name", "text", "The company name in emails."),
    _spec("system_url", "text", "Base URL of the client area (invoice links)."),
)}
assert set(SETTINGS) == set(_FIELDS), "every setting has its SettingSpec"


class UnknownSetting(ValidationError):
    """A name that is not a setting; ``known`` lists the names that are."""

    def __init__(self, name: Any) -> None:
        super().__init__("settings", name, "is not a known setting")
        self.known = tuple(SETTINGS)


def parse_run_time(field: str, text: Any) -> str:
    """``HH:MM`` (or ``H:MM``) from 00:00 to 23:59, returned as ``HH:MM``."""
    rule = "must be a time HH:MM from 00:00 to 23:59 (24-hour, local time)"
    if not isinstance(text, str):
        raise ValidationError(field, text, rule)
    hours, sep, minutes = text.strip().partition(":")
    if not (sep and hours.isascii() and hours.isdigit() and len(hours) <= 2 and minutes.isascii()
            and minutes.isdigit() and len(minutes) == 2 and int(hours) <= 23 and int(minutes) <= 59):
        raise ValidationError(field, text, rule)
    return f"{int(hours):02d}:{minutes}"


def check_setting(name: str, value: Any) -> Any:
    """``value`` checked against the setting's kind, as the JSON-ready value to store (money as a
    string, a time as ``HH:MM``). Strict: a boolean is ``True``/``False``, a number an int, money
    a decimal string, a Decimal or an int (never a float). Raises ``UnknownSetting`` or a
    ``ValidationError`` naming ``settings.<name>``, the value and the rule."""
    spec = SETTINGS.get(name) if isinstance(name, str) else None
    if spec is None:
        raise UnknownSetting(name)
    field_name = f"settings.{name}"
    kind = spec.kind
    if kind == "optional integer" and value is None:
        return None
    if kind in ("integer", "optional integer"):
        return _check_whole(field_name, value, spec.maximum)
    if kind == "boolean":
        if not isinstance(value, bool):
            raise ValidationError(field_name, value, "must be true or false")
        return value
    if kind == "money":
        if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
            raise ValidationError(field_name, value, "must be an amount such as 5.00 (a decimal string, not a float)")
        from .money import parse_money

        parse_money(field_name, value, minor_units=2, allow_zero=True)
        return format(Decimal(str(value).strip()), "f")
    if kind == "percent":
        return _check_percent(field_name, value, MAX_INTEREST_RATE)
    if kind == "time":
        return parse_run_time(field_name, value)
    if kind == "choice":
        if not isinstance(value, str) or value.strip().lower() not in spec.choices:
            raise ValidationError(field_name, value, f"must be one of {', '.join(spec.choices)}")
        return value.strip().lower()
    if kind == "text":
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise ValidationError(field_name, value, f"must be a text of at most {MAX_TEXT} characters")
        return value
    if kind == "statuses":
        if (not isinstance(value, list | tuple) or not value
                or not all(isinstance(v, str) and v.strip() for v in value)):
            raise ValidationError(field_name, value,
                                  'must be a non-empty list of statuses, e.g. ["Active", "Suspended"]')
        return [v.strip() for v in value]
    if kind == "days by cycle":
        if not isinstance(value, dict) or not all(isinstance(k, str) and k.strip() for k in value):
            raise ValidationError(field_name, value, 'must be an object of cycle -> days, e.g. {"Annually": 30}')
        from .cycles import CYCLE_MONTHS

        cycles = tuple(c.value for c in CYCLE_MONTHS)  # the cycles that are invoiced again
        for key in value:
            if key.strip() not in cycles:
                raise ValidationError(f"{field_name}.{key}", key, f"is not a recurring billing cycle "
                                      f"(one of {', '.join(cycles)})")
        return {k.strip(): _check_whole(f"{field_name}.{k}", v, spec.maximum) for k, v in value.items()}
    raise AssertionError(f"unknown kind {kind}")  # pragma: no cover - SETTINGS is fixed


def _check_whole(field_name: str, value: Any, maximum: int = MAX_WHOLE) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValidationError(field_name, _shown(value), f"must be a whole number from 0 to {maximum}")
    return value


def _check_percent(field_name: str, value: Any, maximum: Decimal) -> str:
    """A rate in percent: a decimal string (or an int), 0 to ``maximum``, at most 4 decimal
    places (never a float); stored as a string like money."""
    rule = f"must be a percentage from 0 to {maximum} with at most 4 decimal places, such as 12.5"
    if isinstance(value, bool) or not isinstance(value, int | str | Decimal):
        raise ValidationError(field_name, value, rule + " (a decimal string, not a float)")
    try:
        rate = Decimal(str(value).strip())
    except ArithmeticError:
        raise ValidationError(field_name, value, rule) from None
    if not rate.is_finite() or not 0 <= rate <= maximum or rate != rate.quantize(Decimal("0.0001")):
        raise ValidationError(field_name, value, rule)
    return format(rate, "f")


def _shown(value: Any) -> Any:
    """A huge integer as an error quotes it (its digits would flood the screen)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    return value


#: Money settings that must keep an order: (smaller or equal, larger or equal).
_ORDERED_MONEY = (("add_funds_minimum", "add_funds_maximum"), ("add_funds_maximum", "add_funds_maximum_balance"))


def check_together(current: BillingSettings, values: dict[str, Any]) -> None:
    """Rules between settings, over ``current`` with ``values`` (checked ones) written over it:
    the add-funds minimum is at most the maximum, the maximum at most the largest balance.
    ValidationError naming the setting written (or the first of the pair)."""
    merged = {name: getattr(current, name) for name in ("add_funds_minimum", "add_funds_maximum",
                                                         "add_funds_maximum_balance")}
    merged.update({k: Decimal(str(v)) for k, v in values.items() if k in merged})
    for low, high in _ORDERED_MONEY:
        if merged[low] <= merged[high]:
            continue
        named = low if low in values else high
        raise ValidationError(f"settings.{named}", str(values.get(named, merged[named])),
                              f"must keep {low} ({merged[low]}) at most {high} ({merged[high]})")
    # An interest cap in percent of the invoice total: at most 100 (interest never doubles a bill).
    cap_type = values.get("late_fee_interest_cap_type", current.late_fee_interest_cap_type)
    cap = Decimal(str(values.get("late_fee_interest_cap", current.late_fee_interest_cap)))
    if cap_type == "percentage" and cap > MAX_INTEREST_CAP_PERCENT:
        named = "late_fee_interest_cap" if "late_fee_interest_cap" in values else "late_fee_interest_cap_type"
        raise ValidationError(f"settings.{named}", str(values.get(named, cap)),
                              f"a percentage cap (late_fee_interest_cap_type percentage) is at most "
                              f"{MAX_INTEREST_CAP_PERCENT}; late_fee_interest_cap is {cap}")


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def setting_from_text(name: str, text: str) -> Any:
    """The value an operator typed (``5.00``, ``09:30``, ``true``, ``Active,Suspended``, a JSON
    object for per-cycle days), checked by ``check_setting``; no quoting needed."""
    spec = SETTINGS.get(name)
    if spec is None:
        raise UnknownSetting(name)
    raw = text.strip()
    kind = spec.kind
    if kind in ("integer", "optional integer"):
        if kind == "optional integer" and raw.lower() in ("", "null", "none"):
            return None
        # At most as many digits as MAX_WHOLE: int() of thousands of digits is slow, and past
        # 4300 a ValueError.
        if raw.isascii() and raw.isdigit() and len(raw) <= len(str(MAX_WHOLE)):
            return check_setting(name, int(raw))
        shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
        raise ValidationError(f"settings.{name}", shown, f"must be a whole number from 0 to {spec.maximum}"
                              + (" (or null)" if kind == "optional integer" else ""))
    if kind == "boolean":
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ValidationError(f"settings.{name}", text, "must be true or false")
    if kind in ("statuses", "days by cycle"):
        if raw.startswith(("[", "{")):
            try:
                decoded = json.loads(raw)
            except RecursionError:
                raise ValidationError(f"settings.{name}", raw[:40], "is JSON nested too deep") from None
            except ValueError as exc:  # not JSON, or an integer of more than 4300 digits
                raise ValidationError(f"settings.{name}", raw[:40], f"is not valid JSON ({exc})") from None
            return check_setting(name, decoded)
        if kind == "statuses":
            return check_setting(name, [part for part in raw.split(",") if part.strip()])
        raise ValidationError(f"settings.{name}", text, 'must be a JSON object of cycle -> days, e.g. {"Annually": 30}')
    if kind in ("money", "percent"):
        # A plain 5.00; '"5.00"' (the JSON form) is taken too.
        return check_setting(name, raw[1:-1] if len(raw) >= 2 and raw[0] == raw[-1] == '"' else raw)
    return check_setting(name, text if kind == "text" else raw)


def setting_text(name: str, value: Any) -> str:
    """A setting's value as an operator reads it and would type it (no Python reprs)."""
    kind = SETTINGS[name].kind
    if value is None:
        return "null"
    if kind == "boolean":
        return "true" if value else "false"
    if kind == "statuses":
        return ", ".join(value)
    if kind == "days by cycle":
        return json.dumps(value) if value else "{}"
    return str(value)


def save_settings(session: Session, **values: Any) -> None:
    """Write settings (the CLI, the console, the demo, tests): every value is checked first
    (``check_setting``, then ``check_together`` with the settings stored), so either all are
    written or none (``UnknownSetting`` or a ``ValidationError`` naming the setting)."""
    checked = {name: check_setting(name, value) for name, value in values.items()}
    settings_from_mapping(checked)
    check_together(load_settings(session), checked)
    for name, value in checked.items():
        encoded = json.dumps(value)
        row = session.get(Setting, name)
        if row is None:
            session.add(Setting(name=name, value=encoded))
        else:
            row.value = encoded
    session.flush()
