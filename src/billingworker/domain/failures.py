"""Failures an operator must see: one client that could not be processed, and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from .models import JobFailure
from .redaction import MASK, MAX_SHOWN, escape_unprintable, is_secret_key, mask_text, quote

#: ``job_failures.reason`` holds at most this many characters: the field, the value quoted (at
#: most MAX_SHOWN characters of it, masked) and the rule; a longer reason is cut, its length given.
MAX_REASON_LENGTH = 1_000


@dataclass(frozen=True)
class ClientFailure:
    client_id: int | None
    field: str
    value: Any
    reason: str
    #: False for failures that are the outside world saying no (a declined card), not bad data:
    #: they are recorded and reported but never park the client.
    parks: bool = True

    @property
    def message(self) -> str:
        """``field: value rule``, the value quoted in at most MAX_SHOWN characters and masked
        (``***`` when the field names a secret: ``password``, ``card_number``...)."""
        if not self.field:
            return self.reason
        shown = MASK if is_secret_key(self.field) else quote(self.value, MAX_SHOWN)
        return f"{self.field}: {shown} {self.reason}"


def stored_reason(failure: ClientFailure) -> str:
    """The failure's message as ``job_failures.reason`` keeps it: cut to MAX_REASON_LENGTH
    characters, masked, control characters (but line breaks and tabs) and lone surrogates escaped."""
    text = mask_text(failure.message, MAX_REASON_LENGTH)
    if not text.isprintable():
        text = mask_text(escape_unprintable(text), MAX_REASON_LENGTH)
    return text


def record_failures(session: Session, failures: Sequence[ClientFailure], *, actor: str, message_id: str,
                    now: datetime, error: str = "ValidationError", run_id: int | None = None) -> None:
    """Write the failures to ``job_failures`` in the caller's transaction; each reason bounded
    and masked (``stored_reason``)."""
    if failures:
        session.execute(insert(JobFailure.__table__), [
            {"actor": actor, "message_id": message_id, "client_id": f.client_id, "error": error,
             "field": f.field, "reason": stored_reason(f), "created_at": now, "run_id": run_id} for f in failures])
