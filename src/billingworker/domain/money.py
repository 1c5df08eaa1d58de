"""Money: ``Decimal`` only, rounded to the currency's minor unit here and nowhere else.

Rounding is half-up (the commercial rule operators and tax offices expect), applied to each
total that is stored, never to intermediate products, so lines plus taxes add up to the total.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from .errors import ValidationError

ZERO = Decimal("0")
#: A money string: ASCII digits, one optional point. Python's Decimal() also takes "1E+2", "1_0",
#: ".5" and Arabic-Indic digits, which no sender means as an amount.
_DECIMAL_STRING = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")
#: Money columns are NUMERIC(18, 4): 14 digits before the point.
MAX_AMOUNT = Decimal(10) ** 14


def within_the_books(field: str, value: Any, what: str, amount: Decimal) -> Decimal:
    """``amount``, a sum about to be stored (a balance, a total), if a money column holds it; else
    the input that made it is refused: each argument is within MAX_AMOUNT, but their sum with
    what is already there may not be (stored, it would fail in the database and be retried)."""
    if abs(amount) >= MAX_AMOUNT:
        raise ValidationError(field, value, f"would make {what} {amount}, beyond the largest amount the books "
                                            f"hold ({MAX_AMOUNT - 1})")
    return amount


def quantum(minor_units: int) -> Decimal:
    """The smallest coin of a currency with ``minor_units`` decimal places (2 -> 0.01)."""
    return Decimal(1).scaleb(-minor_units)


def round_money(amount: Decimal, minor_units: int = 2) -> Decimal:
    """Round ``amount`` half-up to the currency's minor unit. The one rounding of money."""
    return amount.quantize(quantum(minor_units), rounding=ROUND_HALF_UP)


def format_money(amount: Decimal, prefix: str = "", suffix: str = "", minor_units: int = 2) -> str:
    """``$12.50 USD``-style text for emails and statements."""
    rounded = round_money(amount, minor_units)
    text = f"{abs(rounded):,.{minor_units}f}"
    sign = "-" if rounded < 0 else ""
    return f"{sign}{prefix}{text}{(' ' + suffix) if suffix else ''}"


def parse_money(field: str, value: Any, *, minor_units: int = 2, allow_zero: bool = False,
                allow_negative: bool = False) -> Decimal:
    """A job argument that is money: a decimal string (or an int), never a float.

    Floats are refused because 0.1 + 0.2 is not 0.3 and the sender's cents would be lost
    before we see them; the error tells the sender what to send instead.
    """
    amount = parse_amount(field, value)
    if amount != round_money(amount, minor_units):
        raise ValidationError(field, value, f"has more than {minor_units} decimal places")
    if amount < 0 and not allow_negative:
        raise ValidationError(field, value, "must not be negative")
    if amount == 0 and not allow_zero:
        raise ValidationError(field, value, "must be greater than zero")
    return round_money(amount, minor_units)


def parse_amount(field: str, value: Any) -> Decimal:
    """The shape of a money argument, before its currency is known: a finite decimal string (or
    an int) within MAX_AMOUNT, never a float. What a sender can be told before the job runs
    (``billingworker enqueue``); the decimal places and the sign are the job's to check."""
    if isinstance(value, bool) or isinstance(value, float):
        raise ValidationError(field, value, 'must be a decimal string such as "10.50", not a JSON number '
                              "with a fraction (floats lose cents)")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, str):
        text = value.strip(" ")  # (spaces only: str.strip() also takes no-break and other Unicode spaces)
        if not _DECIMAL_STRING.fullmatch(text):
            raise ValidationError(field, value, 'is not a decimal number such as "10.50" (ASCII digits, at most '
                                                "one point, no exponent)")
        amount = Decimal(text)
    elif isinstance(value, Decimal):
        amount = value
    else:
        raise ValidationError(field, value, "must be a decimal string")
    if not amount.is_finite():
        raise ValidationError(field, value, "is not a finite number")
    if abs(amount) >= MAX_AMOUNT:
        raise ValidationError(field, value, f"is too large (the largest amount is {MAX_AMOUNT - 1})")
    return amount
