"""Many rows in one statement: the write path of the billing runs.

On PostgreSQL new rows are streamed with COPY and updates travel as one array per column
expanded server-side by ``unnest`` (one short statement, parsed once, whatever the number of
rows). On MySQL/MariaDB new rows go as multi-row INSERTs of up to ~1 MB each, formatted by the
driver without SQLAlchemy's per-row work, and updates as one UPDATE joined to a derived table
of the new values per MYSQL_ROWS_PER_STATEMENT rows. On SQLite both are an ordinary
executemany. All paths write exactly the same rows, inside the session's transaction: they
commit or roll back with everything else.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from functools import cache

import psycopg
from sqlalchemy import Table, func, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from ..db import is_postgres
from .dialect import dialect_name, returns_from_insert

log = logging.getLogger(__name__)
_PG = postgresql.dialect()
#: MySQL/MariaDB: rows per UPDATE and per INSERT whose ids are read back (every INSERT is also cut
#: at about MYSQL_STATEMENT_BYTES).
MYSQL_ROWS_PER_STATEMENT = 2000


def _raw_cursor(session: Session):
    return session.connection().connection.driver_connection.cursor()


def _as_sqlalchemy_error(statement: str, exc: Exception) -> Exception:
    """A driver error raised outside SQLAlchemy, as SQLAlchemy would have raised it
    (IntegrityError, OperationalError ...), so that callers catch one family everywhere."""
    import pymysql

    return DBAPIError.instance(statement, None, exc, pymysql.err.Error)


#: MySQL/MariaDB: the size at which a multi-row INSERT is sent (well below max_allowed_packet).
MYSQL_STATEMENT_BYTES = 1_000_000


def _literal_str(value: str) -> str:
    from pymysql.converters import escape_string

    return "'" + escape_string(value) + "'"


def _literal_datetime(value: datetime) -> str:
    """Timestamps are stored as UTC (the session's time zone is +00:00): an aware value is
    converted, not cut to its wall-clock time."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return f"'{value.isoformat(sep=' ')}'"


#: SQL literals of the values the billing writes, by exact type: the driver's own escaping goes
#: through three calls and a mapping per value, which is a third of a billing run's time.
_LITERALS = {
    int: str,
    bool: lambda v: "1" if v else "0",
    type(None): lambda v: "NULL",
    Decimal: lambda v: format(v, "f"),
    date: lambda v: f"'{v.isoformat()}'",
    datetime: _literal_datetime,
    str: _literal_str,
}


def _literals(conn, values) -> str:
    """``(v1, v2, ...)`` as SQL text; anything unusual is escaped by the driver."""
    out = []
    for v in values:
        literal = _LITERALS.get(type(v))
        if literal is not None:
            out.append(literal(v))
        elif isinstance(v, str):  # a StrEnum member
            out.append(_literal_str(str(v)))
        else:
            out.append(conn.escape(v))
    return "(" + ", ".join(out) + ")"


def _mysql_insert_head(table: Table, columns: Sequence[str]) -> str:
    """``INSERT INTO t (`a`, `b`) VALUES ``: names quoted, as a column may be a word MySQL 8
    reserves (``key``, ``trigger``, ``role``, ``last_value`` ... are)."""
    return f"INSERT INTO `{table.name}` ({', '.join(f'`{c}`' for c in columns)}) VALUES "


def _insert_statements(conn, head: str, rows: Sequence[dict], columns: Sequence[str], max_rows: int):
    """``head`` followed by the rows' values: (statement, number of rows in it), each statement at
    most ``max_rows`` rows and about MYSQL_STATEMENT_BYTES (bytes: max_allowed_packet counts
    bytes, not characters)."""
    parts: list[str] = []
    size = 0
    for row in rows:
        literal = _literals(conn, [row[c] for c in columns])
        parts.append(literal)
        size += len(literal.encode()) + 2
        if size >= MYSQL_STATEMENT_BYTES or len(parts) >= max_rows:
            yield head + ", ".join(parts), len(parts)
            parts, size = [], 0
    if parts:
        yield head + ", ".join(parts), len(parts)


def _execute(cursor, statement: str, shown: str) -> None:
    """Run a statement built here; a driver error comes out as SQLAlchemy's (``shown`` names it)."""
    try:
        cursor.execute(statement)
    except Exception as exc:  # noqa: BLE001 - re-raised as SQLAlchemy's exception
        if _is_driver_error(exc):
            raise _as_sqlalchemy_error(shown, exc) from exc
        raise


def _insert_mysql(session: Session, table: Table, rows: Sequence[dict]) -> None:
    columns = list(rows[0])
    head = _mysql_insert_head(table, columns)
    cursor = _raw_cursor(session)
    with cursor:
        for statement, _count in _insert_statements(cursor.connection, head, rows, columns, len(rows)):
            _execute(cursor, statement, head + "...")


def _is_driver_error(exc: Exception) -> bool:
    import pymysql

    return isinstance(exc, pymysql.err.Error)


def _insert_returning_ids_mariadb(session: Session, table: Table, rows: Sequence[dict]) -> list[int]:
    """One multi-row ``INSERT ... RETURNING id`` per MYSQL_ROWS_PER_STATEMENT rows (MariaDB
    10.5+ returns the rows in the order they were inserted)."""
    columns = list(rows[0])
    head = _mysql_insert_head(table, columns)
    ids: list[int] = []
    cursor = _raw_cursor(session)
    with cursor:
        for statement, _count in _insert_statements(cursor.connection, head, rows, columns, MYSQL_ROWS_PER_STATEMENT):
            _execute(cursor, statement + " RETURNING id", head + "...")
            ids.extend(row[0] for row in cursor.fetchall())
    return ids


def _insert_auto_ids_mysql(session: Session, table: Table, rows: Sequence[dict]) -> list[int]:
    """MySQL 8, which has no ``INSERT ... RETURNING``: the ids come from the table's
    AUTO_INCREMENT, the one id source the other applications use too.

    Where InnoDB hands a multi-row INSERT consecutive ids (``innodb_autoinc_lock_mode`` 0 or 1:
    a "simple insert" takes its whole block at once), one INSERT per MYSQL_ROWS_PER_STATEMENT
    rows, the ids read from LAST_INSERT_ID (the first row's) and ``auto_increment_increment``.
    Under mode 2 (interleaved, MySQL 8's default) a statement's ids may be interleaved with
    another's, so each row is inserted alone and its id read back: slower, never wrong.
    """
    columns = list(rows[0])
    head = _mysql_insert_head(table, columns)
    ids: list[int] = []
    cursor = _raw_cursor(session)
    with cursor:
        cursor.execute("SELECT @@innodb_autoinc_lock_mode, @@auto_increment_increment")
        lock_mode, step = cursor.fetchone()
        if autoinc_ids_are_consecutive(lock_mode):
            per_statement = MYSQL_ROWS_PER_STATEMENT
        else:
            per_statement = 1
            _warn_row_by_row(lock_mode)
        for statement, count in _insert_statements(cursor.connection, head, rows, columns, per_statement):
            _execute(cursor, statement, head + "...")
            first = cursor.lastrowid
            ids.extend(first + n * step for n in range(count))
    return ids


@cache
def _warn_row_by_row(lock_mode) -> None:
    """Said once per process (per lock mode): why inserts go one row at a time."""
    log.warning("MySQL runs with innodb_autoinc_lock_mode=%s: new rows are inserted one per statement to "
                    "read their ids back; innodb_autoinc_lock_mode=1 lets them go 2,000 per statement "
                    "(docs/schema.md, MySQL 8)", lock_mode)


def autoinc_ids_are_consecutive(lock_mode: int) -> bool:
    """Whether InnoDB gives the rows of one multi-row INSERT consecutive AUTO_INCREMENT ids
    (``innodb_autoinc_lock_mode`` 0, traditional, or 1, consecutive)."""
    return int(lock_mode) in (0, 1)


def _update_mysql(session: Session, table: Table, rows: Sequence[dict]) -> None:
    """``UPDATE (SELECT id, values UNION ALL ...) u JOIN t ON t.id = u.id SET t.col = u.col``."""
    columns = [c for c in rows[0] if c != "id"]
    names = ["id", *columns]
    sets = ", ".join(f"t.`{c}` = u.`{c}`" for c in columns)
    cursor = _raw_cursor(session)
    with cursor:
        for start in range(0, len(rows), MYSQL_ROWS_PER_STATEMENT):
            chunk = rows[start:start + MYSQL_ROWS_PER_STATEMENT]
            first, rest = chunk[0], chunk[1:]
            conn = cursor.connection
            derived = "SELECT " + ", ".join(f"{_literals(conn, [first[c]])[1:-1]} AS `{c}`" for c in names)
            if rest:
                derived += " UNION ALL " + " UNION ALL ".join(
                    "SELECT " + _literals(conn, [row[c] for c in names])[1:-1] for row in rest)
            # The values drive, each row found by its primary key: joined the other way round (the
            # optimizer's choice while the table's statistics say it is empty) InnoDB scans the
            # table and waits for, and deadlocks on, rows other transactions are inserting.
            _execute(cursor, f"UPDATE ({derived}) u STRAIGHT_JOIN `{table.name}` t FORCE INDEX (PRIMARY)"
                             f" ON t.id = u.id SET {sets}", f"UPDATE {table.name} ...")


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
    if dialect_name(session) == "mysql":
        _insert_mysql(session, table, rows)
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
    lock from its first statement (BEGIN IMMEDIATE, see db.py). MySQL/MariaDB has no sequence,
    and ids reserved outside AUTO_INCREMENT could meet the ids it hands the other applications:
    there rows are inserted first and their ids read back (``insert_rows_returning_ids``).
    """
    if count <= 0:
        return []
    if dialect_name(session) == "mysql":
        raise NotImplementedError("reserve_ids: MySQL/MariaDB has no sequences; insert with "
                                  "insert_rows_returning_ids, which reads the AUTO_INCREMENT ids back")
    if is_postgres(session):
        return list(session.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table.name, "n": count}).scalars())
    top = session.execute(select(func.coalesce(func.max(table.c.id), 0))).scalar_one()
    return list(range(top + 1, top + count + 1))


def insert_rows_returning_ids(session: Session, table: Table, rows: Sequence[dict]) -> list[int]:
    """INSERT ``rows`` and return their new ids, in the order of ``rows``."""
    if not rows:
        return []
    if dialect_name(session) == "mysql":
        if returns_from_insert(session):
            return _insert_returning_ids_mariadb(session, table, rows)
        return _insert_auto_ids_mysql(session, table, rows)
    ids = reserve_ids(session, table, len(rows))
    insert_rows(session, table, [{"id": i, **row} for i, row in zip(ids, rows, strict=True)])
    return ids


def update_rows(session: Session, table: Table, rows: Sequence[dict]) -> None:
    """UPDATE ``table`` by primary key ``id``: each row is {"id": ..., column: value, ...}."""
    if not rows:
        return
    columns = [c for c in rows[0] if c != "id"]
    if dialect_name(session) == "mysql":
        _update_mysql(session, table, rows)
        return
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


def foreign_keys_checked_per_statement(session: Session) -> bool:
    """Whether this database checks a foreign key at each statement, never at commit (MySQL and
    MariaDB have no DEFERRABLE): there a row must be written after the rows it refers to."""
    return dialect_name(session) == "mysql"
