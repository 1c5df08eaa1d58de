"""INSERT that skips rows clashing with a unique key, and telling a unique-key clash apart."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .dialect import for_dialect


def _postgresql(table, index_elements):
    return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)


def _sqlite(table, index_elements):
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)


_INSERT_IGNORING_CONFLICTS = {"postgresql": _postgresql, "sqlite": _sqlite}


def insert_ignoring_conflicts(session: Session, table, *, index_elements: Sequence[str] | None = None):
    """``INSERT INTO table ... ON CONFLICT [(index_elements)] DO NOTHING``: add ``.values()`` /
    ``.returning()`` to it, or execute it with a list of rows."""
    build = for_dialect(session, _INSERT_IGNORING_CONFLICTS, "insert_ignoring_conflicts")
    return build(table, list(index_elements) if index_elements is not None else None)


def is_unique_clash_on(exc: IntegrityError, table_name: str) -> bool:
    """Whether ``exc`` is a unique key of ``table_name`` refusing a row.

    psycopg: the server names the table and the SQLSTATE (23505, unique_violation). Otherwise
    from the message: SQLite "UNIQUE constraint failed: <table>.<column>, ..."; MySQL "Duplicate
    entry ... for key '<table>.<index>'" (our index names all start with the table's name).
    """
    diag = getattr(exc.orig, "diag", None)
    if getattr(diag, "table_name", None):
        return diag.table_name == table_name and getattr(exc.orig, "sqlstate", None) == "23505"
    message = str(exc.orig)
    lowered = message.lower()
    return table_name in message and ("unique" in lowered or "duplicate" in lowered)
