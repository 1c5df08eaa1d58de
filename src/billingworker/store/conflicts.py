"""INSERT that skips rows clashing with a unique key, telling a unique-key clash apart, and
telling a transient error (retry the transaction) from a real one."""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlalchemy import Engine, UniqueConstraint, event
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from .dialect import for_dialect, returns_from_insert

#: Execution option of a MySQL ``INSERT IGNORE`` built here: the unique keys whose clashes it may
#: skip (None: any unique key). Every other warning of the statement is raised as an error.
IGNORED_KEYS_OPTION = "billingworker_ignored_keys"

#: MySQL/MariaDB error codes.
ER_DUP_ENTRY = 1062
ER_LOCK_WAIT_TIMEOUT = 1205
ER_LOCK_DEADLOCK = 1213
#: PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
PG_TRANSIENT_SQLSTATES = {"40001", "40P01", "55P03"}

_DUPLICATE_KEY = re.compile(r"for key '(?:[^'.]+\.)?([^']+)'")


def _postgresql(table, index_elements):
    return postgresql.insert(table).on_conflict_do_nothing(index_elements=index_elements)


def _sqlite(table, index_elements):
    return sqlite.insert(table).on_conflict_do_nothing(index_elements=index_elements)


def _mysql(table, index_elements):
    """``INSERT IGNORE``, which returns only the rows it inserted (as ON CONFLICT DO NOTHING
    RETURNING does; ON DUPLICATE KEY UPDATE would return the clashing rows too). IGNORE also
    turns every other error (a value that does not fit, a missing foreign key) into a warning:
    ``_refuse_other_warnings`` raises those as errors again, and a clash on a key other than
    ``index_elements`` too, so the statement skips exactly what ON CONFLICT (...) DO NOTHING skips."""
    keys = None if index_elements is None else _key_names(table, index_elements)
    return mysql.insert(table).prefix_with("IGNORE").execution_options(**{IGNORED_KEYS_OPTION: keys})


def _key_names(table, columns: Sequence[str]) -> frozenset[str]:
    table = getattr(table, "__table__", table)  # a model class or its Table
    wanted = set(columns)
    names = set()
    if {c.name for c in table.primary_key.columns} == wanted:
        names.add("PRIMARY")
    names.update(constraint.name for constraint in table.constraints
                 if isinstance(constraint, UniqueConstraint) and {c.name for c in constraint.columns} == wanted)
    names.update(index.name for index in table.indexes if index.unique and {c.name for c in index.columns} == wanted)
    for column in table.columns:
        if column.unique and {column.name} == wanted:
            names.add(column.name)  # MySQL names a column's own UNIQUE key after the column
            names.add(f"uq_{table.name}_{column.name}")
    return frozenset(names)


@event.listens_for(Engine, "after_cursor_execute")
def _refuse_other_warnings(conn, cursor, statement, parameters, context, executemany):
    if context is None or IGNORED_KEYS_OPTION not in context.execution_options:
        return
    result = getattr(cursor, "_result", None)
    if result is not None and not getattr(result, "warning_count", 1):
        return
    allowed = context.execution_options[IGNORED_KEYS_OPTION]
    check = conn.connection.driver_connection.cursor()
    with check:
        check.execute("SHOW WARNINGS")
        warnings = check.fetchall()
        check.execute("SELECT @@warning_count")
        (count,) = check.fetchone()
    import pymysql

    if count > len(warnings):
        # Warnings MySQL did not list (beyond max_error_count): one of them may be a foreign key
        # or a truncation; refuse rather than guess.
        raise pymysql.err.DataError(1265, f"{count} warnings, {len(warnings)} listed: refused, not ignored")
    for _level, code, message in warnings:
        if code == ER_DUP_ENTRY:
            found = _DUPLICATE_KEY.search(message)
            if allowed is None or (found and found.group(1) in allowed):
                continue
        error = pymysql.err.IntegrityError if code in (ER_DUP_ENTRY, 1451, 1452, 1048) else pymysql.err.DataError
        raise error(code, message)


_INSERT_IGNORING_CONFLICTS = {"postgresql": _postgresql, "sqlite": _sqlite, "mysql": _mysql}


def insert_ignoring_conflicts(session: Session, table, *, index_elements: Sequence[str] | None = None):
    """``INSERT INTO table ... ON CONFLICT [(index_elements)] DO NOTHING``: add ``.values()`` /
    ``.returning()`` to it, or execute it with a list of rows."""
    build = for_dialect(session, _INSERT_IGNORING_CONFLICTS, "insert_ignoring_conflicts")
    return build(table, list(index_elements) if index_elements is not None else None)


def insert_ignoring_conflicts_ids_by(session: Session, table, rows: Sequence[dict], key: str, *,
                                     rows_per_statement: int = 500) -> dict:
    """INSERT ``rows`` skipping those that clash with any unique key (``insert_ignoring_conflicts``);
    the new id of each row inserted, by its ``key`` column (a row skipped is not in the answer).

    Where INSERT has no RETURNING (MySQL 8) each row is inserted alone and, if it was inserted,
    its AUTO_INCREMENT id read back: a multi-row INSERT IGNORE cannot tell which of its ids went
    to which row."""
    table = getattr(table, "__table__", table)
    ids: dict = {}
    if returns_from_insert(session):
        for start in range(0, len(rows), rows_per_statement):
            stmt = (insert_ignoring_conflicts(session, table).values(list(rows[start:start + rows_per_statement]))
                    .returning(table.c.id, table.c[key]))
            ids.update({row_key: row_id for row_id, row_key in session.execute(stmt)})
        return ids
    for row in rows:
        result = session.execute(insert_ignoring_conflicts(session, table).values(row))
        if result.rowcount == 1:
            ids[row[key]] = result.inserted_primary_key[0]
    return ids


def _mysql_code(orig) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def is_unique_clash_on(exc: IntegrityError, table_name: str) -> bool:
    """Whether ``exc`` is a unique key of ``table_name`` refusing a row.

    psycopg: the server names the table and the SQLSTATE (23505, unique_violation). MySQL/MariaDB:
    error 1062 on an INSERT/UPDATE of ``table_name`` (MariaDB names only the key, e.g. 'PRIMARY',
    so the table is read from the statement). SQLite: "UNIQUE constraint failed: <table>.<column>".
    """
    diag = getattr(exc.orig, "diag", None)
    if getattr(diag, "table_name", None):
        return diag.table_name == table_name and getattr(exc.orig, "sqlstate", None) == "23505"
    if _mysql_code(exc.orig) == ER_DUP_ENTRY:
        found = _DUPLICATE_KEY.search(str(exc.orig))
        key = found.group(1) if found else ""
        statement = re.sub(r"\s+", " ", str(exc.statement or "")).replace("`", "")
        target = re.match(r"(?:INSERT (?:IGNORE )?INTO|UPDATE|REPLACE INTO) (\w+)", statement.strip(), re.I)
        return (f"'{table_name}." in str(exc.orig) or key.startswith(f"uq_{table_name}_")
                or (target is not None and target.group(1) == table_name))
    message = str(exc.orig)
    lowered = message.lower()
    return table_name in message and ("unique" in lowered or "duplicate" in lowered)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` says "try the transaction again", not "this client's data is wrong": a
    deadlock or a lock wait timeout (MySQL/MariaDB 1213, 1205), a serialization failure or a
    deadlock (PostgreSQL 40001, 40P01) or a lock timeout (55P03). The transaction is lost
    (rolled back); running it again from the start is safe and should succeed."""
    seen = 0
    while exc is not None and seen < 8:  # also the error under another one (see below)
        if isinstance(exc, DBAPIError):
            orig = exc.orig
            if getattr(orig, "sqlstate", None) in PG_TRANSIENT_SQLSTATES:
                return True
            if _mysql_code(orig) in (ER_LOCK_DEADLOCK, ER_LOCK_WAIT_TIMEOUT):
                return True
        # InnoDB answers a deadlock by rolling back the whole transaction, savepoints included:
        # leaving ``begin_nested()`` then fails with "SAVEPOINT ... does not exist" (1305), raised
        # while handling the deadlock, which is its __context__.
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def unstorable_value(exc: BaseException) -> str | None:
    """The database's reason when ``exc`` says "this value cannot be stored" (a number beyond
    its column, a text too long for it, a date it refuses: SQLSTATE class 22, MySQL's DataError),
    else None. Such an error comes back on every try: it is the input's fault, not the moment's."""
    if not isinstance(exc, DataError) or is_transient(exc):
        return None
    said = str(exc.orig).strip()
    return (said.splitlines()[0] if said else type(exc.orig).__name__)[:300]
