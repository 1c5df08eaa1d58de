"""The ``job_failures`` rows an operator reads (``billingworker failures``, the console): plain
data, read inside the session, with the client's name when the client still exists."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..clock import as_utc
from ..domain.models import Client, JobFailure
from .runs import client_name


@dataclass(frozen=True)
class FailureView:
    id: int
    created_at: datetime | None
    actor: str
    client_id: int | None
    #: ``""`` when the failure names no client, or the client was deleted since.
    client_name: str
    run_id: int | None
    field: str
    error: str
    reason: str
    message_id: str

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() if self.created_at else None
        return data


def recent_failures(session: Session, *, limit: int = 50, client_id: int | None = None,
                    run_id: int | None = None) -> list[FailureView]:
    """The newest ``limit`` failures (of one client, of one daily run), newest first."""
    stmt = (select(JobFailure, Client).outerjoin(Client, Client.id == JobFailure.client_id)
            .order_by(JobFailure.id.desc()).limit(limit))
    if client_id is not None:
        stmt = stmt.where(JobFailure.client_id == client_id)
    if run_id is not None:
        stmt = stmt.where(JobFailure.run_id == run_id)
    return [FailureView(f.id, as_utc(f.created_at), f.actor, f.client_id, client_name(c) if c is not None else "",
                        f.run_id, f.field, f.error, f.reason, f.message_id)
            for f, c in session.execute(stmt).all()]
