"""Validating job arguments: JSON types in, domain types out, a ValidationError naming the
field otherwise (so the message is dead-lettered at once instead of retried).

What reaches the database must fit its column: an id beyond the INTEGER range, or a NUL byte in
a text, is refused here rather than by PostgreSQL (whose error would look transient and be
retried ten times).
"""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from ..domain.errors import ValidationError
from ..domain.money import parse_money

__all__ = ["MAX_ID", "MAX_ITEMS", "MAX_BATCH_CLIENTS",
           "parse_id", "parse_optional_id", "parse_date", "parse_bool", "parse_money", "parse_items",
           "parse_text", "parse_id_list", "parse_count", "check_characters"]

#: Every id column is an INTEGER (PostgreSQL int4): ids are 1 .. 2**31 - 1.
MAX_ID = 2**31 - 1
ID_RULE = f"must be a positive integer id of at most {MAX_ID}"
#: A string id has at most as many digits as MAX_ID; longer ones are refused before int(), which
#: would spend time on them (and raises ValueError beyond 4300 digits).
_MAX_ID_DIGITS = len(str(MAX_ID))
#: Control characters (C0, DEL, C1) and lone surrogates: PostgreSQL cannot store NUL, psycopg
#: cannot encode a lone surrogate, and the others make no sense in a name, a reference or a key.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: The same, but line breaks and tabs are allowed (a message body written by an admin).
_CONTROL_IN_MULTILINE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def shown(value: Any, limit: int = 40) -> Any:
    """``value`` as an error message may quote it: a long string or a huge integer cut short."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]}... ({len(value)} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 128:
        return f"<an integer of {value.bit_length()} bits>"
    return value


def parse_id(field: str, value: Any) -> int:
    """A JSON integer id, or a string of at most 10 ASCII digits, in 1 .. MAX_ID."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValidationError(field, shown(value), ID_RULE)
    if isinstance(value, str):
        # int() would also take " 12", "1_2" and other scripts' digits.
        if not (0 < len(value) <= _MAX_ID_DIGITS and value.isascii() and value.isdigit()):
            raise ValidationError(field, shown(value), ID_RULE)
        value = int(value)
    if not 0 < value <= MAX_ID:
        raise ValidationError(field, shown(value), ID_RULE)
    return value


def parse_count(field: str, value: Any, *, maximum: int = MAX_ID) -> int:
    """A JSON integer in 0 .. ``maximum`` (a batch number, a number of seconds)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise ValidationError(field, shown(value), f"must be an integer from 0 to {maximum}")
    return value


#: The most things one message may name (invoice selected items, mass update, delete items).
MAX_ITEMS = 1000
#: The most clients one batch message may name (FAN_OUT_BATCH_SIZE is at most this).
MAX_BATCH_CLIENTS = 10_000


def parse_id_list(field: str, value: Any, *, max_length: int) -> list[int]:
    """A non-empty JSON list of at most ``max_length`` positive integer ids."""
    if not isinstance(value, list) or not value:
        raise ValidationError(field, shown(value), "must be a non-empty list of positive integer ids")
    if len(value) > max_length:
        raise ValidationError(field, f"{len(value)} ids", f"holds more than {max_length} ids")
    return [parse_id(f"{field}[{n}]", v) for n, v in enumerate(value)]


def parse_optional_id(field: str, value: Any) -> int | None:
    return None if value is None else parse_id(field, value)


#: The dates a job accepts (``as_of`` and the like).
FIRST_DATE, LAST_DATE = date(1970, 1, 1), date(2199, 12, 31)


def parse_date(field: str, value: Any) -> date | None:
    """An ISO date ``YYYY-MM-DD``, or None (meaning: today, from the clock)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(field, shown(value), "must be an ISO date string YYYY-MM-DD")
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise ValidationError(field, shown(value), "is not a valid ISO date YYYY-MM-DD") from None
    if not FIRST_DATE <= day <= LAST_DATE:
        # Date arithmetic past year 9999 overflows (a retried OverflowError before): no bill is
        # that far from today.
        raise ValidationError(field, value, f"is outside {FIRST_DATE.isoformat()} .. {LAST_DATE.isoformat()}")
    return day


def parse_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, shown(value), "must be true or false")
    return value


def check_characters(field: str, value: Any, *, multiline: bool = False) -> Any:
    """``value`` unchanged, unless it is a string holding a control character (any, or with
    ``multiline`` any but tab, line feed and carriage return) or a lone surrogate. Other types
    pass: the caller (or the domain) checks them."""
    if isinstance(value, str):
        found = (_CONTROL_IN_MULTILINE if multiline else _CONTROL).search(value)
        if found is not None:
            allowed = " other than tab, line feed and carriage return" if multiline else ""
            raise ValidationError(field, shown(value), f"must not contain control characters{allowed} "
                                  f"(U+{ord(found.group()):04X} at position {found.start()})")
    return value


def parse_text(field: str, value: Any, *, max_length: int = 255, multiline: bool = False) -> str:
    """A non-empty string of at most ``max_length`` characters, trimmed, without control
    characters (``multiline``: tab, line feed and carriage return allowed)."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, shown(value), "must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(field, value[:40] + "...", f"is longer than {max_length} characters")
    # Surrounding whitespace is trimmed (the documented rule), not refused.
    return check_characters(field, value.strip(), multiline=multiline)


def parse_items(field: str, value: Any, allowed: tuple[str, ...]) -> list[tuple[str, int]]:
    """``[{"type": "service", "id": 12}, ...]`` -> [("service", 12), ...]; at most MAX_ITEMS."""
    if not isinstance(value, list) or not value:
        raise ValidationError(field, shown(value), 'must be a non-empty list of {"type": ..., "id": ...} objects')
    if len(value) > MAX_ITEMS:
        raise ValidationError(field, f"{len(value)} items", f"holds more than {MAX_ITEMS} items")
    out = []
    for n, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"type", "id"}:
            raise ValidationError(f"{field}[{n}]", shown(item), 'must be an object {"type": ..., "id": ...}')
        if item["type"] not in allowed:
            raise ValidationError(f"{field}[{n}].type", shown(item["type"]), f"is not one of {', '.join(allowed)}")
        out.append((item["type"], parse_id(f"{field}[{n}].id", item["id"])))
    return out
