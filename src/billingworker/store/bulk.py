"""Many rows in one statement: the write path of the billing runs.

On PostgreSQL new rows are streamed with COPY and updates travel as one array per column
expanded server-side by ``unnest`` (one short statement, parsed once, whatever the number of
rows); elsewhere both are an ordinary executemany. Both paths write exactly the same rows.
COPY runs inside the session's transaction: it commits or rolls back with everything else.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import psycopg
from sqlalchemy import Table, func, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..db import is_postgres

_PG = postgresql.dialect()


@cache
def _pg_type(table: Table, column: str) -> str:
    return table.c[column].type.compile(dialect=_PG)


def _arrays(table: Table, columns: Sequence[str], rows: Sequence[dict]) -> tuple[str, dict]:
    casts = ", ".join(f"CAST(%(c{n})b AS {_pg_type(table, col)}[])" for n, col in enumerate(columns))
    params = {f"c{n}": [row[col] for row in rows] for n, col in enumerate(columns)}
    return casts, params


def insert_rows(session: Session, table: Table, rows: Sequence[dict]) -> None:
    """INSERT ``rows`` (dicts with the same keys) into ``table``."""
    if not rows:
        return
    if not is_postgres(session):
        session.execute(insert(table), list(rows))
        return
    # COPY: rows are streamed and formatted by psycopg's C code; ~3x faster than INSERT here.
    columns = list(rows[0])
    statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN"
    cursor = session.connection().connection.driver_connection.cursor()
    try:
        with cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
    except psycopg.errors.IntegrityError as exc:
        # Raw COPY bypasses SQLAlchemy: give callers the same exception an INSERT would raise
        # (a unique-key clash on a billing guard means "already done" to them).
        raise IntegrityError(statement, None, exc) from exc


def reserve_ids(session: Session, table: Table, count: int) -> list[int]:
    """``count`` new primary keys for ``table``, to insert rows with later in this transaction.

    PostgreSQL: taken from the table's sequence (never handed out twice). SQLite: the next ids
    after the largest, which nobody else can take because the transaction holds the writer
    lock from its first statement (BEGIN IMMEDIATE, see db.py).
    """
    if count <= 0:
        return []
    if is_postgres(session):
        return list(session.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": count}).scalars())
    top = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return list(range(top + 1, top + count + 1))


def insert_rows_returning_ids(session: Session, table: Table, rows: Sequence[dict]) -> list[int]:
    """INSERT ``rows`` and return their new ids, in the order of ``rows``."""
    ids = reserve_ids(session, table, len(rows))
    insert_rows(session, table, [{"id": i, **row} for i, row in zip(ids, rows, strict=True)])
    return ids


def update_rows(session: Session, table: Table, rows: Sequence[dict]) -> None:
    """UPDATE ``table`` by primary key ``id``: each row is {"id": ..., column: value, ...}."""
    if not rows:
        return
    columns = [c for c in rows[0] if c != "id"]
    if not is_postgres(session):
        from sqlalchemy import bindparam

        stmt = update(table).where(table.c.id == bindparam("_id")).values(
            {c: bindparam(c) for c in columns})
        session.execute(stmt, [{"_id": r["id"], **{c: r[c] for c in columns}} for r in rows])
        return
    casts, params = _arrays(table, ["id", *columns], rows)
    names = ", ".join(f"c{n}" for n in range(len(columns) + 1))
    sets = ", ".join(f"{col} = u.c{n + 1}" for n, col in enumerate(columns))
    sql = f"UPDATE {table.name} SET {sets} FROM unnest({casts}) AS u({names}) WHERE {table.name}.id = u.c0"
    session.connection().exec_driver_sql(sql, params)
