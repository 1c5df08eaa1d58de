"""Prorata arithmetic (SPEC §9): amount × days ÷ days of the cycle, rounded once per line."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from billingworker.domain.billing.prorata import (
    ProrataThing,
    cycle_days,
    prorata_amount,
    prorata_item,
    prorata_items,
    prorata_total,
)


def thing(amount: str = "60.00", cycle: str = "Monthly", current: date | None = date(2026, 2, 1),
          new: date = date(2026, 2, 6), item_id: int = 1, taxed: bool = True) -> ProrataThing:
    return ProrataThing("service", item_id, "Shared Hosting - example.com", Decimal(amount), cycle, current, new,
                        taxed)


def test_whmcs_documented_example_60_a_month_for_5_days_is_10():
    assert prorata_amount(Decimal("60.00"), "Monthly", 5) == Decimal("10.00")


@pytest.mark.parametrize(("cycle", "days"), [
    ("Monthly", 30), ("Quarterly", 90), ("Semi-Annually", 180), ("Annually", 365), ("Biennially", 730),
    ("Triennially", 1095)])
def test_cycle_day_counts_are_the_spec_table(cycle, days):
    assert cycle_days(cycle) == days
    # A whole cycle's worth of days is the whole recurring amount.
    assert prorata_amount(Decimal("123.45"), cycle, days) == Decimal("123.45")


def test_rounded_half_up_once_to_the_cent():
    # 100 × 1 / 365 = 0.27397… -> 0.27 ; 10 × 1 / 30 = 0.3333… -> 0.33 ; 0.15 × 1 / 30 * 10 -> 0.05
    assert prorata_amount(Decimal("100.00"), "Annually", 1) == Decimal("0.27")
    assert prorata_amount(Decimal("10.00"), "Monthly", 1) == Decimal("0.33")
    assert prorata_amount(Decimal("0.15"), "Monthly", 10) == Decimal("0.05")
    assert prorata_amount(Decimal("45.00"), "Monthly", 1) == Decimal("1.50")
    # half up: 0.25 × 3 / 30 = 0.025 -> 0.03
    assert prorata_amount(Decimal("0.25"), "Monthly", 3) == Decimal("0.03")


def test_minor_units_of_the_currency():
    assert prorata_amount(Decimal("1000"), "Monthly", 1, minor_units=0) == Decimal("33")
    assert prorata_amount(Decimal("10.000"), "Monthly", 1, minor_units=3) == Decimal("0.333")


def test_free_and_one_time_have_no_prorata():
    assert cycle_days("Free") is None and cycle_days("One Time") is None
    assert prorata_amount(Decimal("60.00"), "Free", 5) == 0
    assert prorata_item(thing(cycle="One Time")) is None


def test_a_later_date_charges_the_days_and_names_the_period():
    line = prorata_item(thing())
    assert line is not None
    assert (line.amount, line.days, line.period_start, line.period_end) == (
        Decimal("10.00"), 5, date(2026, 2, 1), date(2026, 2, 5))
    assert line.description == "Prorata: Shared Hosting - example.com (2026-02-01 - 2026-02-05, 5 days)"
    assert line.taxed is True


def test_an_earlier_date_gives_days_back_as_a_negative_line():
    line = prorata_item(thing(new=date(2026, 1, 27)))
    assert line is not None
    assert (line.amount, line.days, line.period_start, line.period_end) == (
        Decimal("-10.00"), -5, date(2026, 1, 27), date(2026, 1, 31))
    assert line.description.startswith("Prorata Refund: ")


def test_nothing_to_prorate_without_a_move_or_a_current_date():
    assert prorata_item(thing(new=date(2026, 2, 1))) is None
    assert prorata_item(thing(current=None)) is None
    # rounds to zero: no line
    assert prorata_item(thing(amount="0.01", cycle="Annually", new=date(2026, 2, 2))) is None


def test_mixed_cycles_sum_line_by_line():
    lines = prorata_items([
        thing(amount="60.00", cycle="Monthly", new=date(2026, 2, 11), item_id=1),          # 20.00
        thing(amount="365.00", cycle="Annually", new=date(2026, 2, 11), item_id=2),        # 10.00
        thing(amount="90.00", cycle="Quarterly", new=date(2026, 1, 30), item_id=3),        # -2.00
        thing(amount="10.00", cycle="Free", new=date(2026, 2, 11), item_id=4),             # none
    ])
    assert [ln.amount for ln in lines] == [Decimal("20.00"), Decimal("10.00"), Decimal("-2.00")]
    assert prorata_total(lines) == Decimal("28.00")
    assert prorata_total(lines) > 0  # invoiced (SPEC §9)


def test_a_negative_or_zero_sum_is_not_invoiced():
    back = prorata_items([thing(new=date(2026, 1, 27))])
    # The mass update invoices a prorata sum only when it is positive (SPEC §9).
    assert prorata_total(back) == Decimal("-10.00")
    even = prorata_items([thing(new=date(2026, 2, 6), item_id=1), thing(new=date(2026, 1, 27), item_id=2)])
    assert prorata_total(even) == 0
    assert prorata_total([]) == 0
