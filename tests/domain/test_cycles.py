"""Billing cycles and due dates (SPEC §3): keep the anchor day, clamp to the month's end."""

from __future__ import annotations

import calendar
from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from billingworker.domain.cycles import (
    CYCLE_DAYS,
    CYCLE_MONTHS,
    BillingCycle,
    add_months,
    advance_period,
    anchor_day,
    next_due_date,
    parse_cycle,
    recurs,
)
from billingworker.domain.errors import ValidationError

RECURRING = [c for c in BillingCycle if c not in (BillingCycle.FREE, BillingCycle.ONE_TIME)]


def chain(start: date, cycle: str, steps: int, due_day: int | None) -> list[date]:
    """``start`` and the next ``steps`` due dates, as the payment handler would advance them."""
    dates = [start]
    for _ in range(steps):
        dates.append(next_due_date(dates[-1], cycle, due_day))
    return dates


def test_cycle_months_and_days_match_the_spec():
    assert {c.value: m for c, m in CYCLE_MONTHS.items()} == {
        "Monthly": 1, "Quarterly": 3, "Semi-Annually": 6, "Annually": 12, "Biennially": 24, "Triennially": 36,
    }
    assert {c.value: d for c, d in CYCLE_DAYS.items()} == {
        "Monthly": 30, "Quarterly": 90, "Semi-Annually": 180, "Annually": 365, "Biennially": 730, "Triennially": 1095,
    }


@pytest.mark.parametrize(
    ("cycle", "expected"),
    [
        ("Monthly", date(2026, 2, 15)),
        ("Quarterly", date(2026, 4, 15)),
        ("Semi-Annually", date(2026, 7, 15)),
        ("Annually", date(2027, 1, 15)),
        ("Biennially", date(2028, 1, 15)),
        ("Triennially", date(2029, 1, 15)),
    ],
)
def test_every_cycle_advances_by_its_months(cycle, expected):
    # Given as the plain string stored in the database, and as the enum.
    assert next_due_date(date(2026, 1, 15), cycle) == expected
    assert next_due_date(date(2026, 1, 15), BillingCycle(cycle)) == expected
    assert next_due_date(date(2026, 1, 15), cycle, due_day=15) == expected


def test_cycles_cross_the_year_end():
    assert next_due_date(date(2026, 12, 10), "Monthly") == date(2027, 1, 10)
    assert next_due_date(date(2026, 11, 30), "Quarterly", 30) == date(2027, 2, 28)
    assert next_due_date(date(2026, 8, 31), "Semi-Annually", 31) == date(2027, 2, 28)


def test_monthly_from_31_january_keeps_the_31st_with_due_day():
    assert chain(date(2027, 1, 31), "Monthly", 4, due_day=31) == [
        date(2027, 1, 31), date(2027, 2, 28), date(2027, 3, 31), date(2027, 4, 30), date(2027, 5, 31),
    ]


def test_monthly_from_31_january_in_a_leap_year():
    assert chain(date(2028, 1, 31), "Monthly", 4, due_day=31) == [
        date(2028, 1, 31), date(2028, 2, 29), date(2028, 3, 31), date(2028, 4, 30), date(2028, 5, 31),
    ]


def test_without_due_day_the_dates_own_day_is_the_anchor():
    # The first step clamps; from then on the date alone cannot remember the 31st.
    assert next_due_date(date(2027, 1, 31), "Monthly") == date(2027, 2, 28)
    assert next_due_date(date(2027, 2, 28), "Monthly") == date(2027, 3, 28)
    assert next_due_date(date(2027, 3, 31), "Monthly") == date(2027, 4, 30)
    assert next_due_date(date(2027, 4, 30), "Monthly", None) == date(2027, 5, 30)
    assert next_due_date(date(2027, 4, 30), "Monthly", 0) == date(2027, 5, 30)


@pytest.mark.parametrize(
    ("current", "due_day", "expected"),
    [
        (date(2027, 3, 31), 31, 31),
        (date(2027, 2, 28), 31, 31),  # 31 lands on 28 Feb in a common year
        (date(2028, 2, 29), 31, 31),  # ...and on 29 Feb in a leap year
        (date(2028, 2, 28), 31, 28),  # 28 Feb 2028 is not where the 31st lands: the date wins
        (date(2027, 2, 28), 29, 29),
        (date(2027, 2, 28), 30, 30),
        (date(2027, 4, 30), 31, 31),
        (date(2027, 4, 30), 30, 30),
        (date(2027, 3, 15), 31, 15),  # someone moved the date: due_day is not trusted
        (date(2027, 3, 30), 31, 30),  # March has a 31st, so 30 March is not the 31st's landing
        (date(2027, 3, 15), 15, 15),
        (date(2027, 3, 15), None, 15),
        (date(2027, 3, 15), 0, 15),
    ],
)
def test_anchor_day_trusts_due_day_only_when_consistent(current, due_day, expected):
    assert anchor_day(current, due_day) == expected


def test_an_inconsistent_due_day_is_ignored_when_advancing():
    assert next_due_date(date(2027, 3, 15), "Monthly", due_day=31) == date(2027, 4, 15)
    assert next_due_date(date(2027, 1, 30), "Monthly", due_day=31) == date(2027, 2, 28)
    assert next_due_date(date(2027, 2, 28), "Monthly", due_day=30) == date(2027, 3, 30)


def test_quarterly_from_30_november():
    assert chain(date(2026, 11, 30), "Quarterly", 2, due_day=30) == [
        date(2026, 11, 30), date(2027, 2, 28), date(2027, 5, 30),
    ]
    assert chain(date(2027, 11, 30), "Quarterly", 2, due_day=30) == [
        date(2027, 11, 30), date(2028, 2, 29), date(2028, 5, 30),
    ]


def test_annually_from_29_february_comes_back_to_it_in_the_next_leap_year():
    assert chain(date(2028, 2, 29), "Annually", 4, due_day=29) == [
        date(2028, 2, 29), date(2029, 2, 28), date(2030, 2, 28), date(2031, 2, 28), date(2032, 2, 29),
    ]
    # Without the due day, the anchor is lost on the first common year.
    assert chain(date(2028, 2, 29), "Annually", 4, due_day=None)[-1] == date(2032, 2, 28)


def test_biennially_and_triennially_from_29_february():
    assert next_due_date(date(2028, 2, 29), "Biennially", 29) == date(2030, 2, 28)
    assert chain(date(2028, 2, 29), "Biennially", 2, 29)[-1] == date(2032, 2, 29)
    assert next_due_date(date(2028, 2, 29), "Triennially", 29) == date(2031, 2, 28)


@pytest.mark.parametrize("cycle", ["Free", "One Time", BillingCycle.FREE, BillingCycle.ONE_TIME, "monthly", ""])
def test_non_recurring_cycles_have_no_next_due_date(cycle):
    with pytest.raises(ValidationError) as info:
        next_due_date(date(2026, 1, 15), cycle)
    assert info.value.field == "billing_cycle"
    assert info.value.value == cycle
    assert "does not recur" in info.value.rule


def test_recurs():
    assert [c.value for c in BillingCycle if recurs(c)] == [
        "Monthly", "Quarterly", "Semi-Annually", "Annually", "Biennially", "Triennially",
    ]
    assert recurs("Monthly") is True
    assert recurs("Free") is False
    assert recurs("One Time") is False
    assert recurs("monthly") is False


def test_parse_cycle():
    assert parse_cycle("Semi-Annually") is BillingCycle.SEMI_ANNUALLY
    assert parse_cycle("One Time") is BillingCycle.ONE_TIME


@pytest.mark.parametrize(("field", "value"), [("billing_cycle", "Weekly"), ("items[2].cycle", "monthly")])
def test_parse_cycle_errors_name_the_field(field, value):
    kwargs = {} if field == "billing_cycle" else {"field": field}
    with pytest.raises(ValidationError) as info:
        parse_cycle(value, **kwargs)
    assert info.value.field == field
    assert info.value.value == value
    assert "Monthly" in info.value.rule and "Triennially" in info.value.rule


@pytest.mark.parametrize(
    ("start", "months", "anchor", "expected"),
    [
        (date(2026, 1, 31), 1, None, date(2026, 2, 28)),
        (date(2026, 12, 15), 1, None, date(2027, 1, 15)),
        (date(2026, 1, 10), -1, None, date(2025, 12, 10)),
        (date(2026, 3, 31), -1, None, date(2026, 2, 28)),
        (date(2026, 2, 28), 1, 31, date(2026, 3, 31)),
        (date(2026, 1, 15), 0, None, date(2026, 1, 15)),
        (date(2026, 1, 15), 25, None, date(2028, 2, 15)),
    ],
)
def test_add_months(start, months, anchor, expected):
    assert add_months(start, months, anchor) == expected


@pytest.mark.parametrize(
    ("start", "every", "unit", "expected"),
    [
        (date(2026, 1, 30), 3, "Days", date(2026, 2, 2)),
        (date(2026, 12, 31), 1, "Days", date(2027, 1, 1)),
        (date(2026, 1, 30), 2, "Weeks", date(2026, 2, 13)),
        (date(2026, 1, 31), 1, "Months", date(2026, 2, 28)),
        (date(2026, 11, 15), 3, "Months", date(2027, 2, 15)),
        (date(2028, 2, 29), 1, "Years", date(2029, 2, 28)),
        (date(2028, 2, 29), 4, "Years", date(2032, 2, 29)),
        (date(2026, 5, 5), 2, "Years", date(2028, 5, 5)),
    ],
)
def test_advance_period(start, every, unit, expected):
    assert advance_period(start, every, unit) == expected


@pytest.mark.parametrize("unit", ["Fortnights", "days", "Month", ""])
def test_advance_period_refuses_an_unknown_unit(unit):
    with pytest.raises(ValidationError) as info:
        advance_period(date(2026, 1, 1), 1, unit)
    assert info.value.field == "recur_cycle"
    assert info.value.value == unit
    assert info.value.rule == "must be one of Days, Weeks, Months, Years"


@given(
    start=st.dates(min_value=date(1990, 1, 1), max_value=date(2200, 12, 31)),
    cycle=st.sampled_from(RECURRING),
    k=st.integers(min_value=1, max_value=40),
)
def test_next_due_date_never_drifts_from_its_anchor(start, cycle, k):
    current = start
    for _ in range(k):
        current = next_due_date(current, cycle, due_day=start.day)
    assert current == add_months(start, k * CYCLE_MONTHS[cycle], start.day)
    # Concretely: exactly k cycles of months later, on the anchor day or the last day of a short month.
    months = (current.year - start.year) * 12 + current.month - start.month
    assert months == k * CYCLE_MONTHS[cycle]
    assert current.day == min(start.day, calendar.monthrange(current.year, current.month)[1])
