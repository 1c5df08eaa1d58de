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
from .dialect import dialect_name, is_mariadb, returns_from_insert

_PG = postgresql.dialect()
#: MySQL/MariaDB: rows per UPDATE (and per INSERT ... RETURNING); the INSERT batches are sized by
#: the driver (PyMySQL's executemany packs rows into statements of up to ~1 MB).
MYSQL_ROWS_PER_STATEMENT = 2000
#: MySQL/MariaDB only (made by migration 0001): the counters of ``reserve_ids``, named
#: ``id:<table>``, and the rows of ``store.locks.transaction_lock``, named ``lock:<key>``.
MYSQL_SEQUENCES_TABLE = "billingworker_sequences"
MYSQL_ID_COUNTER_PREFIX = "id:"


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


def _insert_mysql(session: Session, table: Table, rows: Sequence[dict]) -> None:
    columns = list(rows[0])
    head = _mysql_insert_head(table, columns)
    cursor = _raw_cursor(session)
    conn = cursor.connection
    try:
        with cursor:
            parts: list[str] = []
            size = 0
            for row in rows:
                literal = _literals(conn, [row[c] for c in columns])
                parts.append(literal)
                size += len(literal.encode()) + 2  # bytes: max_allowed_packet counts bytes, not characters
                if size >= MYSQL_STATEMENT_BYTES:
                    cursor.execute(head + ", ".join(parts))
                    parts, size = [], 0
            if parts:
                cursor.execute(head + ", ".join(parts))
    except Exception as exc:  # noqa: BLE001 - re-raised as SQLAlchemy's exception
        if _is_driver_error(exc):
            raise _as_sqlalchemy_error(head + "...", exc) from exc
        raise


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
        for start in range(0, len(rows), MYSQL_ROWS_PER_STATEMENT):
            chunk = rows[start:start + MYSQL_ROWS_PER_STATEMENT]
            statement = head + ", ".join(_literals(cursor.connection, [row[c] for c in columns]) for row in chunk)
            statement += " RETURNING id"
            try:
                cursor.execute(statement)
            except Exception as exc:  # noqa: BLE001 - re-raised as SQLAlchemy's exception
                if _is_driver_error(exc):
                    raise _as_sqlalchemy_error(head + "...", exc) from exc
                raise
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
        per_statement = MYSQL_ROWS_PER_STATEMENT if autoinc_ids_are_consecutive(lock_mode) else 1
        for start in range(0, len(rows), per_statement):
            chunk = rows[start:start + per_statement]
            statement = head + ", ".join(_literals(cursor.connection, [row[c] for c in columns]) for row in chunk)
            try:
                cursor.execute(statement)
            except Exception as exc:  # noqa: BLE001 - re-raised as SQLAlchemy's exception
                if _is_driver_error(exc):
                    raise _as_sqlalchemy_error(head + "...", exc) from exc
                raise
            first = cursor.lastrowid
            ids.extend(first + n * step for n in range(len(chunk)))
    return ids


def autoinc_ids_are_consecutive(lock_mode: int) -> bool:
    """Whether InnoDB gives the rows of one multi-row INSERT consecutive AUTO_INCREMENT ids
    (``innodb_autoinc_lock_mode`` 0, traditional, or 1, consecutive)."""
    return int(lock_mode) in (0, 1)


def _reserve_ids_mysql(session: Session, table: Table, count: int) -> list[int]:
    """MySQL has no sequences: a counter row per table in ``billingworker_sequences`` (a
    MySQL-only table, made by the first migration) plays one.

    It is moved on in a connection of its own, in autocommit (like ``nextval``: never handed out
    twice, never given back, no lock held until the caller commits, nothing to roll back), past
    the largest id of the table and the table's AUTO_INCREMENT. An INSERT that takes its id from
    AUTO_INCREMENT in the moment between a reservation and the insert of the reserved rows could
    still take one of them (the reserved rows then fail on the primary key and the transaction is
    rolled back): billingworker's own writes to these tables use reserved or returned ids.
    """
    name = MYSQL_ID_COUNTER_PREFIX + table.name
    floor = (f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table.name}),"
             " (SELECT COALESCE(AUTO_INCREMENT, 1) - 1 FROM information_schema.tables"
             f" WHERE table_schema = DATABASE() AND table_name = '{table.name}'))")
    with session.get_bind().engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        if not is_mariadb(session):
            # MySQL 8 answers information_schema.tables from a cache up to a day old by default.
            conn.exec_driver_sql("SET SESSION information_schema_stats_expiry = 0")
        conn.exec_driver_sql(
            f"INSERT INTO {MYSQL_SEQUENCES_TABLE} (name, `last_value`) VALUES (%s, 0)"
            " ON DUPLICATE KEY UPDATE name = name", (name,))
        conn.exec_driver_sql(
            f"UPDATE {MYSQL_SEQUENCES_TABLE} SET `last_value` = LAST_INSERT_ID(GREATEST(`last_value`, {floor}) + %s)"
            " WHERE name = %s", (count, name))
        last = conn.exec_driver_sql("SELECT LAST_INSERT_ID()").scalar_one()
    return list(range(last - count + 1, last + 1))


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
            statement = (f"UPDATE ({derived}) u STRAIGHT_JOIN `{table.name}` t FORCE INDEX (PRIMARY)"
                         f" ON t.id = u.id SET {sets}")
            try:
                cursor.execute(statement)
            except Exception as exc:  # noqa: BLE001 - re-raised as SQLAlchemy's exception
                if _is_driver_error(exc):
                    raise _as_sqlalchemy_error(f"UPDATE {table.name} ...", exc) from exc
                raise


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
    lock from its first statement (BEGIN IMMEDIATE, see db.py). MySQL/MariaDB: see
    ``_reserve_ids_mysql``.
    """
    if count <= 0:
        return []
    if dialect_name(session) == "mysql":
        return _reserve_ids_mysql(session, table, count)
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
