"""A counter row made on first use: one statement that inserts it or adds to it."""

from __future__ import annotations

from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session

from .dialect import for_dialect


def _on_conflict(insert_for):
    def add(table, key: dict, column: str, amount: int):
        return (insert_for(table).values({**key, column: amount})
                .on_conflict_do_update(index_elements=list(key), set_={column: table.c[column] + amount}))
    return add


def _mysql(table, key: dict, column: str, amount: int):
    # An upsert locks the existing row exclusively at once. INSERT IGNORE followed by UPDATE would
    # take a shared lock in its duplicate check first: two workers holding it that both go on to
    # the UPDATE deadlock (seen on MariaDB when workers took the first invoice numbers together).
    return mysql.insert(table).values({**key, column: amount}).on_duplicate_key_update(
        {column: table.c[column] + amount})


_ADD = {"postgresql": _on_conflict(postgresql.insert), "sqlite": _on_conflict(sqlite.insert), "mysql": _mysql}


def add_to_counter(session: Session, table, key: dict, column: str, amount: int) -> None:
    """Add ``amount`` to ``column`` of the row of ``table`` with primary key ``key``, creating
    the row (with ``amount``) if there is none; the row stays locked until the transaction ends."""
    table = getattr(table, "__table__", table)
    session.execute(for_dialect(session, _ADD, "add_to_counter")(table, key, column, amount))
