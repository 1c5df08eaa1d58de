"""Billing cycles and due-date arithmetic (SPEC §3).

Advancing keeps the anchor day of the month: 31 Jan -> 28/29 Feb -> 31 Mar. Because a date
alone cannot remember that it "wants" the 31st after visiting February, recurring things carry
a ``due_day`` column; ``anchor_day`` decides when it can be trusted.
"""

from __future__ import annotations

import calendar
from datetime import date, timedelta
from enum import StrEnum
from functools import lru_cache

from .errors import ValidationError


class BillingCycle(StrEnum):
    FREE = "Free"
    ONE_TIME = "One Time"
    MONTHLY = "Monthly"
    QUARTERLY = "Quarterly"
    SEMI_ANNUALLY = "Semi-Annually"
    ANNUALLY = "Annually"
    BIENNIALLY = "Biennially"
    TRIENNIALLY = "Triennially"


#: Months per recurring cycle.
CYCLE_MONTHS: dict[BillingCycle, int] = {
    BillingCycle.MONTHLY: 1,
    BillingCycle.QUARTERLY: 3,
    BillingCycle.SEMI_ANNUALLY: 6,
    BillingCycle.ANNUALLY: 12,
    BillingCycle.BIENNIALLY: 24,
    BillingCycle.TRIENNIALLY: 36,
}

#: Days per cycle for prorata (SPEC §9, WHMCS's documented figures).
CYCLE_DAYS: dict[BillingCycle, int] = {
    BillingCycle.MONTHLY: 30,
    BillingCycle.QUARTERLY: 90,
    BillingCycle.SEMI_ANNUALLY: 180,
    BillingCycle.ANNUALLY: 365,
    BillingCycle.BIENNIALLY: 730,
    BillingCycle.TRIENNIALLY: 1095,
}


def parse_cycle(value: str, field: str = "billing_cycle") -> BillingCycle:
    try:
        return BillingCycle(value)
    except ValueError:
        names = ", ".join(c.value for c in BillingCycle)
        raise ValidationError(field, value, f"is not a billing cycle (one of {names})") from None


def recurs(cycle: str) -> bool:
    """Free and One Time things are never invoiced again."""
    return cycle in CYCLE_MONTHS


@lru_cache(maxsize=4096)
def days_in_month(year: int, month: int) -> int:
    """``calendar.monthrange(year, month)[1]``, remembered: generation asks it twice per thing."""
    return calendar.monthrange(year, month)[1]


def add_months(start: date, months: int, anchor_day: int | None = None) -> date:
    """``start`` moved by ``months``, on ``anchor_day`` (default: start's day), clamped to month end."""
    day = anchor_day or start.day
    index = start.year * 12 + (start.month - 1) + months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day, days_in_month(year, month)))


def anchor_day(current: date, due_day: int | None) -> int:
    """The day of month a thing renews on.

    ``due_day`` is trusted only when ``current`` is where that anchor lands in its month (the
    day itself, or the month's last day when the month is shorter). Otherwise someone moved the
    date without telling us (another application sharing the database), and the date wins.
    """
    if due_day:
        last = days_in_month(current.year, current.month)
        if current.day == min(due_day, last):
            return due_day
    return current.day


def next_due_date(current: date, cycle: str, due_day: int | None = None) -> date:
    """The due date one ``cycle`` after ``current``, keeping the anchor day (SPEC §3)."""
    months = CYCLE_MONTHS.get(cycle)  # type: ignore[call-overload]
    if months is None:
        raise ValidationError("billing_cycle", cycle, "does not recur, so it has no next due date")
    return add_months(current, months, anchor_day(current, due_day))


def advance_period(current: date, every: int, unit: str) -> date:
    """Billable items recur every N Days / Weeks / Months / Years."""
    if unit == "Days":
        return current + timedelta(days=every)
    if unit == "Weeks":
        return current + timedelta(weeks=every)
    if unit == "Months":
        return add_months(current, every)
    if unit == "Years":
        return add_months(current, 12 * every)
    raise ValidationError("recur_cycle", unit, "must be one of Days, Weeks, Months, Years")
