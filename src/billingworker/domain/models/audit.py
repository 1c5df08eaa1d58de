"""What operators did in the web console: one row per action and per sign-in attempt."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, String
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, Base


class ConsoleAudit(Base):
    """One console event (an action, a refusal, a sign-in, failed ones too). Written by the
    console only, never updated: the trail an operator's manager reads."""

    __tablename__ = "console_audit"
    __table_args__ = (Index("ix_console_audit_at", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: UTC.
    at: Mapped[datetime]
    #: The user name as typed at sign-in (also for a failed one), else the session's user.
    username: Mapped[str] = mapped_column(String(100))
    #: admin | viewer | "" (unknown user)
    role: Mapped[str] = mapped_column(String(20), default="", server_default="")
    #: sign_in, sign_out, requeue, purge, unpark, resend...
    action: Mapped[str] = mapped_column(String(50))
    #: What it was done to: a dead letter id, a client id, an outbox id, a queue.
    target: Mapped[str] = mapped_column(String(200), default="", server_default="")
    #: Masked details (a corrected argument, a refusal's reason).
    detail: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    #: ok | failed | refused (role, CSRF, throttle) | denied (wrong password)
    outcome: Mapped[str] = mapped_column(String(20))
    #: The client address the request came from.
    remote_addr: Mapped[str] = mapped_column(String(64), default="", server_default="")


class ConsoleSession(Base):
    """One signed-in console session. The browser's cookie carries a random token; this row holds
    its SHA-256 (a copy of the table signs nobody in). Sign-out deletes the row, so a saved
    cookie replayed afterwards is refused; a row older than the session lifetime is ignored and
    removed at the next sign-in."""

    __tablename__ = "console_sessions"

    #: SHA-256 (hex) of the cookie's session token.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: The CONSOLE_USERS name signed in (looked up again in CONSOLE_USERS on every request).
    username: Mapped[str] = mapped_column(String(100))
    #: UTC; the session ends SESSION_LIFETIME after it, however active.
    signed_in_at: Mapped[datetime]
