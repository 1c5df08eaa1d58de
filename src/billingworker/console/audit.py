"""The console's audit log (table ``console_audit``): every action and every sign-in attempt,
refused and failed ones too, with its details masked (``domain.redaction``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from ..clock import as_utc
from ..db import unit_of_work
from ..domain.models import ConsoleAudit
from ..domain.redaction import mask_text

#: Characters of ``detail`` kept (masked first, then cut).
DETAIL_LIMIT = 2_000


@dataclass(frozen=True)
class AuditEvent:
    username: str
    role: str
    action: str
    target: str = ""
    detail: str = ""
    outcome: str = "ok"
    remote_addr: str = ""


def record(engine: Engine, event: AuditEvent, *, now: datetime) -> None:
    """Write ``event`` in a transaction of its own (kept even when the action failed)."""
    with unit_of_work(engine) as session:
        session.add(ConsoleAudit(at=now, username=event.username[:100], role=event.role[:20],
                                 action=event.action[:50], target=mask_text(event.target, 200),
                                 detail=mask_text(event.detail, DETAIL_LIMIT), outcome=event.outcome[:20],
                                 remote_addr=event.remote_addr[:64]))
        session.commit()


def recent(engine: Engine, *, limit: int = 200, username: str | None = None) -> list[dict]:
    """The newest ``limit`` events, newest first, as plain dicts for a page."""
    with unit_of_work(engine) as session:
        stmt = select(ConsoleAudit).order_by(ConsoleAudit.id.desc()).limit(limit)
        if username:
            stmt = stmt.where(ConsoleAudit.username == username)
        return [{"id": r.id, "at": as_utc(r.at), "username": r.username, "role": r.role, "action": r.action,
                 "target": r.target, "detail": r.detail, "outcome": r.outcome, "remote_addr": r.remote_addr}
                for r in session.execute(stmt).scalars()]
