"""Failures an operator must see: one client that could not be processed, and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from .models import JobFailure


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
        return f"{self.field}: {self.value!r} {self.reason}" if self.field else self.reason


def record_failures(session: Session, failures: Sequence[ClientFailure], *, actor: str, message_id: str,
                    now: datetime, error: str = "ValidationError", run_id: int | None = None) -> None:
    """Write the failures to ``job_failures`` in the caller's transaction."""
    if failures:
        session.execute(insert(JobFailure.__table__), [
            {"actor": actor, "message_id": message_id, "client_id": f.client_id, "error": error,
             "field": f.field, "reason": f.message, "created_at": now, "run_id": run_id} for f in failures])
