"""Locks that are not row locks (row locks are plain ``with_for_update`` in the domain)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from .dialect import for_dialect


def _postgresql(session: Session, key: int) -> None:
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _sqlite(session: Session, key: int) -> None:
    # Nothing to take: a SQLite transaction holds the writer lock from its first statement
    # (BEGIN IMMEDIATE, see db.py), so writers already run one at a time.
    return None


_TRANSACTION_LOCK = {"postgresql": _postgresql, "sqlite": _sqlite}


def transaction_lock(session: Session, key: int) -> None:
    """Take the installation-wide lock ``key`` until the session's transaction ends: two
    transactions asking for the same key run that part in turn."""
    for_dialect(session, _TRANSACTION_LOCK, "transaction_lock")(session, key)
