"""Signed-in sessions kept in the database (table ``console_sessions``).

The signed cookie alone cannot be revoked: a copy saved before sign-out would work until it
expires. So the cookie carries a random token and the session exists only while its row does:
sign-out deletes the row, and a replayed cookie then signs nobody in. Only the token's SHA-256 is
stored, so reading the table gives no session away.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete

from ..clock import as_utc
from ..db import unit_of_work
from ..domain.models import ConsoleSession

#: A token longer than this is not one of ours (not even looked up).
TOKEN_MAX = 100


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start(engine: Engine, username: str, *, now: datetime, lifetime: float) -> str:
    """A new session for ``username``; returns the token for the cookie. Sessions past their
    lifetime are removed meanwhile (the table holds live sessions only, give or take)."""
    token = secrets.token_urlsafe(32)
    with unit_of_work(engine) as session:
        session.execute(delete(ConsoleSession).where(ConsoleSession.signed_in_at < now - timedelta(seconds=lifetime)))
        session.add(ConsoleSession(id=_digest(token), username=username, signed_in_at=now))
        session.commit()
    return token


def find(engine: Engine, token: object, *, now: datetime, lifetime: float) -> str | None:
    """The user name of the live session of ``token``; None if it was ended, expired or never was."""
    if not isinstance(token, str) or not token or len(token) > TOKEN_MAX:
        return None
    with unit_of_work(engine) as session:
        row = session.get(ConsoleSession, _digest(token))
        if row is None or (now - as_utc(row.signed_in_at)).total_seconds() > lifetime:
            return None
        return row.username


def end(engine: Engine, token: object) -> None:
    """End the session of ``token`` (nothing if there is none)."""
    if not isinstance(token, str) or not token or len(token) > TOKEN_MAX:
        return
    with unit_of_work(engine) as session:
        session.execute(delete(ConsoleSession).where(ConsoleSession.id == _digest(token)))
        session.commit()
