"""Money (SPEC §7, §8): Decimal only, half-up to the minor unit, floats refused at the door."""

from __future__ import annotations

from decimal import Decimal

import pytest

from billingworker.domain.errors import ValidationError
from billingworker.domain.money import ZERO, format_money, parse_money, quantum, round_money


@pytest.mark.parametrize(("minor_units", "expected"), [(0, "1"), (2, "0.01"), (3, "0.001")])
def test_quantum_is_the_smallest_coin(minor_units, expected):
    assert quantum(minor_units) == Decimal(expected)


@pytest.mark.parametrize(
    ("amount", "minor_units", "expected"),
    [
        # Two minor units: half-up, not banker's rounding (2.675 -> 2.68, 0.125 -> 0.13).
        ("2.675", 2, "2.68"),
        ("0.005", 2, "0.01"),
        ("0.004", 2, "0.00"),
        ("0.125", 2, "0.13"),
        ("0.135", 2, "0.14"),
        ("10.494999", 2, "10.49"),
        ("10.495", 2, "10.50"),
        ("7", 2, "7.00"),
        # Zero minor units (JPY-like): 0.5 -> 1, 2.5 -> 3 (banker's would say 2).
        ("0.5", 0, "1"),
        ("2.5", 0, "3"),
        ("2.49", 0, "2"),
        ("1234.5", 0, "1235"),
        # Three minor units (KWD-like).
        ("1.0005", 3, "1.001"),
        ("1.0004", 3, "1.000"),
        ("0.0025", 3, "0.003"),
        # Negatives round half away from zero, the mirror image of the positives.
        ("-2.675", 2, "-2.68"),
        ("-0.005", 2, "-0.01"),
        ("-0.004", 2, "0.00"),
        ("-2.5", 0, "-3"),
        ("-1.0005", 3, "-1.001"),
    ],
)
def test_round_money_half_up(amount, minor_units, expected):
    result = round_money(Decimal(amount), minor_units)
    assert result == Decimal(expected)
    # The result carries exactly the currency's places (what is stored and shown).
    assert result.as_tuple().exponent == -minor_units


def test_round_money_defaults_to_two_places():
    assert str(round_money(Decimal("1.005"))) == "1.01"
    assert str(round_money(ZERO)) == "0.00"


@pytest.mark.parametrize(
    ("amount", "kwargs", "expected"),
    [
        ("12.5", {}, "12.50"),
        ("12.5", {"prefix": "$", "suffix": "USD"}, "$12.50 USD"),
        ("1234567.891", {"prefix": "£"}, "£1,234,567.89"),
        ("2.675", {"suffix": "EUR"}, "2.68 EUR"),
        ("1234.5", {"minor_units": 0, "suffix": "JPY"}, "1,235 JPY"),
        ("1.0005", {"minor_units": 3}, "1.001"),
        ("0", {"prefix": "$"}, "$0.00"),
        ("-5", {"suffix": "USD"}, "-5.00 USD"),
    ],
)
def test_format_money(amount, kwargs, expected):
    assert format_money(Decimal(amount), **kwargs) == expected


# --- parse_money: what a job may send -------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("10.50", "10.50"),
        ("10.5", "10.50"),
        (" 10.50 ", "10.50"),
        ("10", "10.00"),
        ("10.500", "10.50"),  # trailing zeros are not extra precision
        (10, "10.00"),
        (Decimal("10.50"), "10.50"),
        (Decimal("3"), "3.00"),
        ("0.01", "0.01"),
    ],
)
def test_parse_money_accepts_decimal_strings_ints_and_decimals(value, expected):
    result = parse_money("amount", value)
    assert result == Decimal(expected)
    assert isinstance(result, Decimal)
    assert result.as_tuple().exponent == -2


def test_parse_money_quantizes_to_the_currency():
    assert str(parse_money("amount", "500", minor_units=0)) == "500"
    assert str(parse_money("amount", "1.5", minor_units=3)) == "1.500"
    assert str(parse_money("amount", "1.005", minor_units=3)) == "1.005"


def refused(value, field: str = "amount", **kwargs) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        parse_money(field, value, **kwargs)
    assert info.value.field == field
    assert info.value.value is value  # the error carries what was sent, untouched
    return info.value


@pytest.mark.parametrize("value", [10.5, 0.1, 10.0, float("nan"), float("inf")])
def test_parse_money_refuses_floats_and_says_what_to_send(value):
    error = refused(value)
    assert "decimal string" in error.rule
    assert "floats lose cents" in error.rule


@pytest.mark.parametrize("value", [True, False])
def test_parse_money_refuses_bools(value):
    # bool is an int subclass: True must not become 1.00.
    error = refused(value, allow_zero=True)
    assert "decimal string" in error.rule


@pytest.mark.parametrize("value", ["abc", "", "10,50", "ten", "1.2.3", "$10"])
def test_parse_money_refuses_text_that_is_not_a_number(value):
    assert refused(value).rule.startswith("is not a decimal number")


@pytest.mark.parametrize("value", ["NaN", "nan", "sNaN", "Infinity", "-Infinity", "inf"])
def test_parse_money_refuses_non_finite_text(value):
    assert refused(value, allow_negative=True).rule.startswith("is not a decimal number")


@pytest.mark.parametrize("value", [Decimal("NaN"), Decimal("Infinity"), Decimal("-Infinity")])
def test_parse_money_refuses_non_finite(value):
    assert refused(value, allow_negative=True).rule == "is not a finite number"


@pytest.mark.parametrize("value", [None, [10], {"amount": "10"}, b"10"])
def test_parse_money_refuses_other_types(value):
    assert refused(value).rule == "must be a decimal string"


@pytest.mark.parametrize(
    ("value", "minor_units"),
    [("10.505", 2), ("0.001", 2), (Decimal("1.234"), 2), ("1.5", 0), ("1.0001", 3)],
)
def test_parse_money_refuses_too_many_decimals(value, minor_units):
    error = refused(value, minor_units=minor_units)
    assert error.rule == f"has more than {minor_units} decimal places"


@pytest.mark.parametrize("value", ["-1", "-0.01", -5, Decimal("-10.00")])
def test_parse_money_refuses_negative_unless_allowed(value):
    assert refused(value).rule == "must not be negative"
    assert parse_money("amount", value, allow_negative=True) == Decimal(value)


@pytest.mark.parametrize("value", ["0", "0.00", 0, Decimal("0")])
def test_parse_money_refuses_zero_unless_allowed(value):
    assert refused(value).rule == "must be greater than zero"
    assert parse_money("amount", value, allow_zero=True) == Decimal("0.00")


def test_parse_money_error_names_the_given_field():
    with pytest.raises(ValidationError) as info:
        parse_money("late_fee_amount", 2.5)
    assert info.value.field == "late_fee_amount"
    assert info.value.value == 2.5
    assert str(info.value).startswith("late_fee_amount: 2.5 must be a decimal string")
    assert info.value.as_dict()["field"] == "late_fee_amount"


@pytest.mark.parametrize("value", [10**30, "100000000000000", "-100000000000000.00", 10**14])
def test_parse_money_refuses_absurdly_large_amounts_as_validation_error(value):
    # Beyond NUMERIC(18, 4) (and beyond Decimal's 28 digits, where quantize itself would fail):
    # bad input, not a crash that Dramatiq would retry.
    error = refused(value, allow_negative=True)
    assert error.rule == "is too large (the largest amount is 99999999999999)"


@pytest.mark.parametrize("value", ["1e-3", "1E+2", "1e30", "1_0", ".5", "10.", "1.2.3", "\u0661\u0660", "\uff11\uff10",
                                   "--1", "1 0", "0x10", "Infinity", "NaN", "", "\u00a010", "10\n"])
def test_parse_money_takes_only_ascii_digits_and_one_point(value):
    # Decimal() takes most of these ("1_0" is 10, Arabic-Indic "١٠" is 10): no sender means them
    assert refused(value, allow_negative=True).rule.startswith('is not a decimal number such as "10.50"')


def test_parse_money_accepts_the_largest_amount():
    assert parse_money("amount", "99999999999999.99") == Decimal("99999999999999.99")
    assert parse_money("amount", "-99999999999999.99", allow_negative=True) == Decimal("-99999999999999.99")
