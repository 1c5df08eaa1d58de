"""Our small error hierarchy.

``ValidationError`` and ``NotFound`` mean the job's input is wrong: retrying cannot help, so
actors declare them in ``throws`` and Dramatiq dead-letters the message at once.
"""

from __future__ import annotations

from typing import Any


class BillingError(Exception):
    """Base of every error the billing domain raises on purpose."""


class ValidationError(BillingError):
    """Bad input: names the field, the value and the rule it breaks."""

    def __init__(self, field: str, value: Any, rule: str) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        super().__init__(f"{field}: {value!r} {rule}")

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "value": repr(self.value), "rule": self.rule}


class NotFound(ValidationError):
    """A referenced record does not exist (unknown client, invoice...)."""

    def __init__(self, field: str, value: Any, what: str | None = None) -> None:
        super().__init__(field, value, f"does not match any {what or field.removesuffix('_id')}")


class Conflict(BillingError):
    """The request is well formed but the current state refuses it (e.g. different currencies)."""
