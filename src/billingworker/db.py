"""Engine, session factory and the unit of work (commit explicitly, roll back by default).

SQLite is the embedded default. To make it behave like PostgreSQL under two writers, every
transaction there starts with ``BEGIN IMMEDIATE`` (the writer lock is taken up front, so a
second writer waits for it instead of failing half-way) and foreign keys are switched on.

MySQL/MariaDB (``mysql://`` or ``mariadb://``, through PyMySQL) is set up per connection to
behave like PostgreSQL where the guarantees depend on it: ``utf8mb4`` (any script, emoji
included), the session time zone UTC, strict ``sql_mode`` (a value that does not fit is an
error, never silently truncated or zeroed) and READ COMMITTED: like PostgreSQL's default, every
statement sees what was committed before it (after waiting for a row lock, the rows read next
are the ones the other transaction committed, not a snapshot from before the wait), and InnoDB
takes no gap locks for plain locking reads, so ``FOR UPDATE`` locks exactly the rows it names.
The unique keys stay the final guard (InnoDB still locks the key it checks for duplicates).
See docs/schema.md, "MySQL/MariaDB".
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from .clock import TIME_ZONE_INFO
from .config import get_config
from .store import mysql_ddl as _mysql_ddl  # noqa: F401 - registers the MySQL/MariaDB table options
from .store.arrays import among as among  # moved to store/; the old name still answers

#: How long a SQLite writer waits for the lock before giving up, in seconds.
SQLITE_BUSY_TIMEOUT = 30

#: MySQL/MariaDB: refuse what does not fit instead of truncating it, and no zero dates.
MYSQL_SQL_MODE = ("STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,"
                  "NO_ENGINE_SUBSTITUTION")
#: Run on every new MySQL/MariaDB connection (see the module's docstring).
#: ``max_error_count``: SHOW WARNINGS lists every warning of a statement (its default, 64, would
#: let an INSERT IGNORE of many duplicates hide one foreign-key or truncation warning among them).
MYSQL_INIT_COMMAND = f"SET time_zone = '+00:00', sql_mode = '{MYSQL_SQL_MODE}', max_error_count = 65535"
#: Per connection, on MySQL/MariaDB (PostgreSQL's default; see the module's docstring).
MYSQL_ISOLATION_LEVEL = "READ COMMITTED"
#: Connections older than this (seconds) are replaced: below the server's ``wait_timeout``.
MYSQL_POOL_RECYCLE = 3600


def normalise_url(url: str) -> str:
    """``postgresql://`` means psycopg 3 here (the bare scheme would pick psycopg2); ``mysql://``
    and ``mariadb://`` mean PyMySQL (the bare scheme would pick mysqlclient, a C extension)."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url.removeprefix("postgres://")
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    for scheme in ("mysql", "mariadb"):
        if url.startswith(f"{scheme}://"):
            url = f"{scheme}+pymysql://" + url.removeprefix(f"{scheme}://")
    return url


def is_mysql_url(url: str) -> bool:
    return url.startswith(("mysql", "mariadb"))


def create_db_engine(url: str, **kwargs) -> Engine:
    url = normalise_url(url)
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT}, **kwargs)
        _make_sqlite_transactional(engine)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if is_mysql_url(url):
        kwargs.setdefault("pool_recycle", MYSQL_POOL_RECYCLE)
        kwargs.setdefault("isolation_level", MYSQL_ISOLATION_LEVEL)
        connect_args = {"charset": "utf8mb4", "init_command": MYSQL_INIT_COMMAND,
                        **kwargs.pop("connect_args", {})}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        _keep_mysql_session_settings(engine)
        return engine
    return create_engine(url, **kwargs)


class UnsafeMySQLSession(RuntimeError):
    """A MySQL/MariaDB connection whose settings the store's SQL is not safe under."""


def _keep_mysql_session_settings(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):
        # Our settings whatever ``connect_args`` said (a caller's init_command replaces ours),
        # then checked: the store escapes the values of the statements it builds with
        # backslashes, which NO_BACKSLASH_ESCAPES would turn into SQL injection.
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(MYSQL_INIT_COMMAND)
            cursor.execute("SELECT @@SESSION.sql_mode")
            (mode,) = cursor.fetchone()
        finally:
            cursor.close()
        if "NO_BACKSLASH_ESCAPES" in (mode or "").upper():
            raise UnsafeMySQLSession(f"this MySQL/MariaDB session runs with sql_mode {mode!r}: NO_BACKSLASH_ESCAPES "
                                     "is not supported (the worker escapes with backslashes)")


def _make_sqlite_transactional(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record):  # pragma: no cover - exercised by every SQLite test
        # Let SQLAlchemy, not the sqlite3 module, decide when transactions begin.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = NORMAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def is_postgres(session_or_engine) -> bool:
    bind = session_or_engine.get_bind() if isinstance(session_or_engine, Session) else session_or_engine
    return bind.dialect.name == "postgresql"


@lru_cache(maxsize=8)
def _engine_for(url: str) -> Engine:
    return create_db_engine(url)


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for ``url`` (default: DATABASE_URL)."""
    return _engine_for(url or get_config().database_url)


def session_factory(engine: Engine | None = None) -> sessionmaker[Session]:
    return sessionmaker(bind=engine or get_engine(), expire_on_commit=False, autoflush=False,
                        # the installation's zone, for the domain's ``settings.local_day``
                        info={TIME_ZONE_INFO: get_config().time_zone})


@contextmanager
def unit_of_work(engine: Engine | None = None) -> Iterator[Session]:
    """A session whose work is kept only if the caller calls ``session.commit()``.

    Anything else (an exception, a forgotten commit) rolls back: nothing half-done is kept.
    """
    session = session_factory(engine)()
    try:
        yield session
    finally:
        session.rollback()
        session.close()


def for_update(stmt):
    """``stmt`` taking a row lock and reading the row as it is now (not as the session cached it)."""
    return stmt.with_for_update().execution_options(populate_existing=True)

