"""Jinja filters: how the console writes times, ages, money and JSON."""

from __future__ import annotations

import json
from datetime import datetime
from decimal import Decimal
from typing import Any

from ..clock import as_utc
from ..domain.money import format_money
from ..ops.status import format_age


def when(moment: datetime | str | None) -> str:
    """``2026-11-29 13:05:12 UTC``; ``-`` for nothing."""
    if moment is None or moment == "":
        return "-"
    if isinstance(moment, str):
        moment = datetime.fromisoformat(moment)
    return f"{as_utc(moment):%Y-%m-%d %H:%M:%S} UTC"


def age(seconds: float | None) -> str:
    return "n/a" if seconds is None else format_age(seconds)


def money(amount: Decimal | str | None, currency: str = "") -> str:
    """``12.50 USD``: every amount is shown with its currency, never summed across currencies."""
    if amount is None:
        return "-"
    text = format_money(Decimal(str(amount)))
    return f"{text} {currency}".strip()


def pretty_json(value: Any) -> str:
    return json.dumps(value, indent=2, default=str, ensure_ascii=False)


def count(value: int | None) -> str:
    return "n/a" if value is None else str(value)


FILTERS = {"when": when, "age": age, "money": money, "pretty_json": pretty_json, "count": count}
