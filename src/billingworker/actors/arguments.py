"""Validating job arguments: JSON types in, domain types out, a ValidationError naming the
field otherwise (so the message is dead-lettered at once instead of retried)."""

from __future__ import annotations

from datetime import date
from typing import Any

from ..domain.errors import ValidationError
from ..domain.money import parse_money

__all__ = ["parse_id", "parse_optional_id", "parse_date", "parse_bool", "parse_money", "parse_items", "parse_text",
           "parse_id_list"]


def parse_id(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValidationError(field, value, "must be a positive integer id")
    try:
        number = int(value)
    except ValueError:
        raise ValidationError(field, value, "must be a positive integer id") from None
    if number <= 0:
        raise ValidationError(field, value, "must be a positive integer id")
    return number


def parse_id_list(field: str, value: Any, *, max_length: int) -> list[int]:
    """A non-empty JSON list of at most ``max_length`` positive integer ids."""
    if not isinstance(value, list) or not value:
        raise ValidationError(field, value, "must be a non-empty list of positive integer ids")
    if len(value) > max_length:
        raise ValidationError(field, f"{len(value)} ids", f"holds more than {max_length} ids")
    return [parse_id(f"{field}[{n}]", v) for n, v in enumerate(value)]


def parse_optional_id(field: str, value: Any) -> int | None:
    return None if value is None else parse_id(field, value)


def parse_date(field: str, value: Any) -> date | None:
    """An ISO date ``YYYY-MM-DD``, or None (meaning: today, from the clock)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationError(field, value, "must be an ISO date string YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValidationError(field, value, "is not a valid ISO date YYYY-MM-DD") from None


def parse_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, value, "must be true or false")
    return value


def parse_text(field: str, value: Any, *, max_length: int = 255) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(field, value, "must be a non-empty string")
    if len(value) > max_length:
        raise ValidationError(field, value[:40] + "...", f"is longer than {max_length} characters")
    return value.strip()


def parse_items(field: str, value: Any, allowed: tuple[str, ...]) -> list[tuple[str, int]]:
    """``[{"type": "service", "id": 12}, ...]`` -> [("service", 12), ...]."""
    if not isinstance(value, list) or not value:
        raise ValidationError(field, value, 'must be a non-empty list of {"type": ..., "id": ...} objects')
    out = []
    for n, item in enumerate(value):
        if not isinstance(item, dict) or set(item) != {"type", "id"}:
            raise ValidationError(f"{field}[{n}]", item, 'must be an object {"type": ..., "id": ...}')
        if item["type"] not in allowed:
            raise ValidationError(f"{field}[{n}].type", item["type"], f"is not one of {', '.join(allowed)}")
        out.append((item["type"], parse_id(f"{field}[{n}].id", item["id"])))
    return out

