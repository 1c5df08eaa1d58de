"""Prorata of a moved next due date (SPEC §9): pure arithmetic, no database.

For each thing whose next due date moves from ``current`` to ``new``, the prorata amount is
``recurring amount × days ÷ days of the cycle`` (Monthly 30, Quarterly 90, Semi-Annually 180,
Annually 365, Biennially 730, Triennially 1095: ``cycles.CYCLE_DAYS``), rounded half-up to the
currency's minor unit once per line (``money.round_money``). Moving a date later charges the
extra days (a positive line); moving it earlier gives days back (a negative line). The invoice
total is the sum of the lines, and it is invoiced only if that sum is positive.

Free and One Time things have no cycle length: they give no line (zero), not an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal

from ..cycles import CYCLE_DAYS
from ..money import ZERO, round_money


@dataclass(frozen=True)
class ProrataThing:
    """What the prorata of one thing needs: its values *after* the update, and its dates."""

    item_type: str
    item_id: int
    #: Shown on the invoice line, e.g. "Shared Hosting - example.com".
    label: str
    recurring_amount: Decimal
    billing_cycle: str
    #: The next due date before the update (the base of the period).
    current_due_date: date | None
    new_due_date: date
    taxed: bool


@dataclass(frozen=True)
class ProrataItem:
    item_type: str
    item_id: int
    description: str
    #: Rounded to the currency's minor unit; negative when the date moved earlier.
    amount: Decimal
    days: int
    taxed: bool
    #: The period the line charges (or gives back): first and last day, inclusive.
    period_start: date
    period_end: date


def cycle_days(billing_cycle: str) -> int | None:
    """Days of one cycle for prorata, or None for Free / One Time (and anything not recurring)."""
    return CYCLE_DAYS.get(billing_cycle)  # type: ignore[call-overload]


def prorata_amount(recurring_amount: Decimal, billing_cycle: str, days: int, minor_units: int = 2) -> Decimal:
    """``recurring_amount × days ÷ cycle days``, rounded once; zero for a cycle without a length.

    >>> prorata_amount(Decimal("60.00"), "Monthly", 5)
    Decimal('10.00')
    """
    length = cycle_days(billing_cycle)
    if length is None or days == 0:
        return round_money(ZERO, minor_units)
    # Multiply before dividing, and round only the result: no cent is lost on the way.
    return round_money(Decimal(recurring_amount) * days / length, minor_units)


def prorata_item(thing: ProrataThing, minor_units: int = 2) -> ProrataItem | None:
    """The line for one thing, or None when there is nothing to prorate (no current due date,
    the date did not move, a Free / One Time cycle, or an amount that rounds to zero)."""
    if thing.current_due_date is None:
        return None
    days = (thing.new_due_date - thing.current_due_date).days
    amount = prorata_amount(thing.recurring_amount, thing.billing_cycle, days, minor_units)
    if amount == 0:
        return None
    start, end = sorted((thing.current_due_date, thing.new_due_date))
    end = end - timedelta(days=1)
    verb = "Prorata" if days > 0 else "Prorata Refund"
    description = f"{verb}: {thing.label} ({start.isoformat()} - {end.isoformat()}, {abs(days)} days)"
    return ProrataItem(thing.item_type, thing.item_id, description, amount, days, thing.taxed, start, end)


def prorata_items(things: Iterable[ProrataThing], minor_units: int = 2) -> list[ProrataItem]:
    """One line per thing that has something to prorate, in the order given."""
    return [line for line in (prorata_item(t, minor_units) for t in things) if line is not None]


def prorata_total(lines: Sequence[ProrataItem]) -> Decimal:
    """The sum of the lines (before tax): invoiced only when positive (SPEC §9)."""
    return sum((line.amount for line in lines), ZERO)
