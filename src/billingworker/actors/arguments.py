"""Validating job arguments: JSON types in, domain types out, a ValidationError naming the
field otherwise (so the message is dead-lettered at once instead of retried).

What reaches the database must fit its column: an id beyond the INTEGER range, or a NUL byte in
a text, is refused here rather than by PostgreSQL (whose error would look transient and be
retried ten times).
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any, TypeVar

from ..domain.errors import ValidationError
from ..domain.money import parse_amount, parse_money

__all__ = ["MAX_ID", "MAX_ITEMS", "MAX_BATCH_CLIENTS",
           "parse_id", "parse_optional_id", "parse_date", "parse_bool", "parse_money", "parse_amount", "parse_items",
           "parse_text", "parse_id_list", "parse_count", "check_characters", "argument_rules", "check_arguments",
           "Rule", "Check"]

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


# --- declared rules: the checks a job runs first, which a sender can run before sending -----------

#: A rule is called as ``rule(name, value)`` and raises ValidationError (the parse_* functions
#: above, or a ``functools.partial`` of one with its options).
Rule = Callable[[str, Any], Any]
#: A rule over several arguments together (a real run's day and its ``dry_run``): called with the
#: arguments given, by name, after each one passed its own rule; raises ValidationError.
Check = Callable[[Mapping[str, Any]], Any]
F = TypeVar("F", bound=Callable[..., Any])
_RULES = "__argument_rules__"
_CHECKS = "__argument_checks__"


def argument_rules(*checks: Check, **rules: Rule) -> Callable[[F], F]:
    """Declare the rules of a job's arguments, under ``@job()``::

        @job()
        @argument_rules(invoice_id=parse_id, gateway=partial(parse_text, max_length=50))
        def apply_payment(invoice_id, amount, gateway, transaction_id, fees="0"): ...

    The job checks every argument it was given against its rule before its body runs (a bad
    one is refused like any ValidationError: dead-lettered, a ``job_failures`` row); the body
    still parses them as before. ``checks`` (positional) are rules over the arguments together,
    run after those of each argument (``run_daily_automation``: no real run of a future day).
    ``check_arguments`` runs the same rules for a sender (``billingworker enqueue``, the
    console's requeue, ``dead-letters requeue --set``), so all refuse exactly the same values.
    Rules needing the database (money in the client's currency) stay in the body.
    """

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        unknown = set(rules) - set(signature.parameters)
        if unknown:
            raise TypeError(f"argument_rules for {fn.__name__} name no parameter: {', '.join(sorted(unknown))}")

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any) -> Any:
            # Positional arguments are checked too (deliver_email(42) is sent so): by the name
            # the signature gives them. Arguments that do not bind are refused by ``job``.
            try:
                named = signature.bind_partial(*args, **kwargs).arguments
            except TypeError:
                named = kwargs
            _apply(rules, named)
            for check in checks:
                check(named)
            return fn(*args, **kwargs)

        setattr(checked, _RULES, dict(rules))
        setattr(checked, _CHECKS, tuple(checks))
        return checked  # type: ignore[return-value]

    return decorate


def _apply(rules: Mapping[str, Rule], kwargs: Mapping[str, Any]) -> None:
    for name, value in kwargs.items():
        rule = rules.get(name)
        if rule is not None:
            rule(name, value)


def check_arguments(fn: Callable[..., Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse ``kwargs`` for the job function ``fn`` (an actor's ``fn``) as the job would: an
    unknown keyword, a missing required argument, then each declared rule (``argument_rules``).
    Raises ValidationError naming the field; returns None when the job would take them."""
    parameters = inspect.signature(fn).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    named = [n for n, p in parameters.items() if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                             inspect.Parameter.KEYWORD_ONLY)]
    for name in kwargs:
        if name not in named and not takes_any:
            raise ValidationError(name, shown(kwargs[name]), f"is not an argument of {fn.__name__} "
                                  f"(its arguments: {', '.join(named) or 'none'})")
    for name in named:
        if parameters[name].default is inspect.Parameter.empty and name not in kwargs:
            raise ValidationError(name, None, f"is required by {fn.__name__}")
    _apply(getattr(fn, _RULES, {}), kwargs)
    for check in getattr(fn, _CHECKS, ()):
        check(kwargs)
