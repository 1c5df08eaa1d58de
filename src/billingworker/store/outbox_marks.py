"""Marking a delivered email ``sent`` the moment the server accepted it (``domain/messaging/delivery``).

Where the database allows it, a mark is one statement in autocommit (the update and the
``email_log`` row in one CTE) that does not wait for the WAL flush (``synchronous_commit =
off``). A database without an entry in ``_FAST_MARKS`` gets ``False`` from ``begin_fast_marks``
and the domain writes each mark in a transaction of its own, in plain SQLAlchemy.
"""

from __future__ import annotations

from sqlalchemy import Connection, text

from .dialect import dialect_name, for_dialect

_PG_MARK = text(
    "WITH marked AS (UPDATE email_outbox SET status = 'sent', sent_at = :now"
    " WHERE id = :outbox_id AND status = 'sending' RETURNING id)"
    " INSERT INTO email_log (client_id, outbox_id, template, subject, body_text, body_html, to_address, cc,"
    " sent_at) SELECT :client_id, id, :template, :subject, :body_text, :body_html, :to_address, :cc, :now"
    " FROM marked RETURNING id")


def _begin_postgresql(conn: Connection) -> None:
    conn.execution_options(isolation_level="AUTOCOMMIT")
    conn.exec_driver_sql("SET synchronous_commit = off")


def _end_postgresql(conn: Connection) -> None:
    conn.exec_driver_sql("RESET synchronous_commit")


def _mark_postgresql(conn: Connection, values: dict) -> int | None:
    return conn.execute(_PG_MARK, values).scalar()


#: dialect -> (begin, end, mark one row)
_FAST_MARKS = {"postgresql": (_begin_postgresql, _end_postgresql, _mark_postgresql)}


def begin_fast_marks(conn: Connection) -> bool:
    """Put ``conn`` in one-statement-per-mark mode; False if this database has none (then write
    each mark in a transaction of its own and do not call the two functions below)."""
    fast = _FAST_MARKS.get(dialect_name(conn))
    if fast is None:
        return False
    fast[0](conn)
    return True


def end_fast_marks(conn: Connection) -> None:
    """Give ``conn`` its settings back (before it returns to the pool)."""
    for_dialect(conn, _FAST_MARKS, "end_fast_marks")[1](conn)


def mark_sent_and_log(conn: Connection, values: dict) -> int | None:
    """Mark outbox row ``values["outbox_id"]`` ``sent`` and write its ``email_log`` row, in one
    statement; the log row's id, or None if the row was no longer ``sending``."""
    return for_dialect(conn, _FAST_MARKS, "mark_sent_and_log")[2](conn, values)
