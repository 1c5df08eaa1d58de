"""Locks that are not row locks (row locks are plain ``with_for_update`` in the domain)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

from .dialect import dialect_name, for_dialect


def _postgresql(session: Session, key: int) -> None:
    session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _sqlite(session: Session, key: int) -> None:
    # Nothing to take: a SQLite transaction holds the writer lock from its first statement
    # (BEGIN IMMEDIATE, see db.py), so writers already run one at a time.
    return None


def _mysql(session: Session, key: int) -> None:
    # GET_LOCK would hold the lock for the connection's life, not the transaction's: a row lock
    # ends with the transaction, as pg_advisory_xact_lock does. The row (in the MySQL-only table
    # billingworker_sequences, named "lock:<key>") is made on first use and never removed.
    name = f"lock:{key}"
    # `last_value` quoted: LAST_VALUE is a reserved word (a window function) on MySQL 8.
    session.execute(text("INSERT INTO billingworker_sequences (name, `last_value`) VALUES (:name, 0)"
                         " ON DUPLICATE KEY UPDATE name = name"), {"name": name})
    session.execute(text("SELECT `last_value` FROM billingworker_sequences WHERE name = :name FOR UPDATE"),
                    {"name": name})


_TRANSACTION_LOCK = {"postgresql": _postgresql, "sqlite": _sqlite, "mysql": _mysql}


def transaction_lock(session: Session, key: int) -> None:
    """Take the installation-wide lock ``key`` until the session's transaction ends: two
    transactions asking for the same key run that part in turn."""
    for_dialect(session, _TRANSACTION_LOCK, "transaction_lock")(session, key)


def locks_only_the_named_table(session: Session) -> bool:
    """Whether ``SELECT ... JOIN ... FOR UPDATE OF t`` locks the rows of ``t`` only. MariaDB has no
    ``OF`` (MySQL 8 has it): SQLAlchemy leaves it out and the rows of every joined table are locked too (the
    currency row of every client, one row all billing transactions would queue for, and deadlock
    on). There lock the rows by themselves first, then read the join without a lock (READ
    COMMITTED: the read sees what the previous holder committed)."""
    return dialect_name(session) != "mysql" or bool(session.get_bind().dialect.supports_for_update_of)
