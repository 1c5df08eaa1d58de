"""Helpers of the store tests: lock waits made short for one session."""

from __future__ import annotations

from sqlalchemy import text


def short_lock_wait(session, seconds: int) -> None:
    """Make ``session`` give up waiting for a row lock after ``seconds`` (its transaction only on
    PostgreSQL; the session on MySQL/MariaDB, put back by ``restore_lock_wait``)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL lock_timeout = '{seconds}s'"))
    else:
        session.execute(text(f"SET SESSION innodb_lock_wait_timeout = {seconds}"))


def restore_lock_wait(session) -> None:
    """A MySQL session variable outlives the transaction on the pooled connection: put it back,
    or the next test's lock waits give up after a second."""
    if session.get_bind().dialect.name != "postgresql":
        session.execute(text("SET SESSION innodb_lock_wait_timeout = DEFAULT"))
        session.rollback()
