"""Shared fixtures: real SQLite, PostgreSQL and MariaDB databases, migrated by Alembic.

Domain tests take the ``engine`` fixture, which runs each test once per database named in
``TEST_DATABASES`` (default ``sqlite,postgresql,mariadb,mysql8-forms``; name fewer for a quicker run).
``mysql8-forms`` is MariaDB told it has no ``INSERT ... RETURNING`` (see ``_as_mysql8``): the code
written for MySQL 8 runs against a real InnoDB server, there being no MySQL 8 server here.
A named server must answer: a missing server fails the run (CI must never pass by skipping).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

# Tests never talk to a production broker: actors bind to the in-process broker.
os.environ.setdefault("BROKER_URL", "stub://")
os.environ.setdefault("MAIL_URL", "memory://")
# The test doubles (a gateway that approves without charging, a module that runs nothing) exist
# only when switched on; the worker subprocesses of tests/integration and tests/ops inherit this.
os.environ.setdefault("PAYMENT_GATEWAYS", "test")
os.environ.setdefault("SERVER_MODULES", "test")

import pytest
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.orm import Session

from billingworker.bootstrap import bootstrap
from billingworker.db import create_db_engine, session_factory
from billingworker.domain.models import Base
from billingworker.migrate import upgrade_engine
from billingworker.store.dialect import as_mysql8

# The process's broker (the in-process one above) with every job bound to it, as a worker's
# ``billingworker.worker`` does; tests replace parts of the runtime with ``runtime.configure``.
bootstrap()

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# One database per test run, so that two runs on one server (a developer and CI) never meet.
PG_TEST_DB = os.environ.get("TEST_PG_DATABASE", f"billingworker_test_{os.getpid()}")
PG_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_TEST_DB


MYSQL_ADMIN_URL = os.environ.get("TEST_MYSQL_ADMIN_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
MYSQL_TEST_DB = os.environ.get("TEST_MYSQL_DATABASE", f"billingworker_test_{os.getpid()}")
MYSQL_URL = MYSQL_ADMIN_URL.rsplit("/", 1)[0] + "/" + MYSQL_TEST_DB

#: The databases the ``engine`` fixture runs each test on.
DEFAULT_TEST_DATABASES = "sqlite,postgresql,mariadb,mysql8-forms"
TEST_DATABASES = [name.strip() for name in os.environ.get("TEST_DATABASES", DEFAULT_TEST_DATABASES).split(",")
                  if name.strip()]
_ENGINE_FIXTURES = {"sqlite": "sqlite_engine", "postgresql": "pg_engine", "mariadb": "mariadb_engine",
                    "mysql8-forms": "mysql8_forms_engine"}
#: Tests that need MariaDB whatever they run on: not collected until TEST_DATABASES names it.
collect_ignore = [] if "mariadb" in TEST_DATABASES else ["integration/test_mariadb_worker.py"]
_unknown = set(TEST_DATABASES) - set(_ENGINE_FIXTURES)
if _unknown:
    raise RuntimeError(f"TEST_DATABASES names unknown databases {sorted(_unknown)}: "
                       f"choose from {sorted(_ENGINE_FIXTURES)}")


def _create_pg_database() -> None:
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_TEST_DB}" WITH (FORCE)'))
            conn.execute(text(f'CREATE DATABASE "{PG_TEST_DB}"'))
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        raise RuntimeError(
            f"PostgreSQL at {PG_ADMIN_URL} does not answer ({exc}). Start it: "
            "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
        ) from exc
    finally:
        admin.dispose()


def _migrated(url: str) -> str:
    """``url``, its database brought to the newest schema by the migrations."""
    engine = create_db_engine(url)
    upgrade_engine(engine)
    engine.dispose()
    return url


@pytest.fixture(scope="session")
def pg_url() -> str:
    _create_pg_database()
    return _migrated(PG_URL)


_mysql_created: list[str] = []
#: The database of the ``mysql8-forms`` runs (a MariaDB database of this test run's own).
MYSQL8_FORMS_DB = MYSQL_TEST_DB + "_m8"
MYSQL8_FORMS_URL = MYSQL_ADMIN_URL.rsplit("/", 1)[0] + "/" + MYSQL8_FORMS_DB


@event.listens_for(Engine, "engine_connect")
def _as_mysql8(connection) -> None:
    """Every engine on MYSQL8_FORMS_DB (the fixtures' and the ones the code under test makes
    from a URL) is told, after SQLAlchemy read the server's version, what MySQL 8 lacks: so the
    store picks its MySQL 8 forms (AUTO_INCREMENT ids read back instead of RETURNING) and any
    ``.returning()`` left in the code fails to compile, as it would on MySQL 8."""
    dialect = connection.dialect
    if connection.engine.url.database == MYSQL8_FORMS_DB and dialect.insert_returning:
        as_mysql8(dialect)


def _create_mysql_database(name: str = MYSQL_TEST_DB) -> None:
    _mysql_created.append(name)
    admin = create_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
            # The server's defaults on purpose (as in a shared database): the tables carry their own.
            conn.execute(text(f"CREATE DATABASE `{name}`"))
    except Exception as exc:  # noqa: BLE001 - re-raised with the fix
        raise RuntimeError(
            f"MariaDB at {MYSQL_ADMIN_URL} does not answer ({exc}). Start it: service mariadb start") from exc
    finally:
        admin.dispose()


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    _create_mysql_database()
    return _migrated(MYSQL_URL)


@pytest.fixture(scope="session")
def mysql8_forms_url() -> str:
    _create_mysql_database(MYSQL8_FORMS_DB)
    return _migrated(MYSQL8_FORMS_URL)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    return _migrated(f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}")


_engines: dict[str, Engine] = {}


def _engine(url: str) -> Engine:
    if url not in _engines:
        _engines[url] = create_db_engine(url)
    return _engines[url]


def wipe(engine: Engine) -> None:
    """Empty every table (the schema stays), so each test starts from nothing."""
    tables = [t.name for t in reversed(Base.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # A session a test forgot to close would make TRUNCATE wait forever: fail instead.
            conn.execute(text("SET LOCAL lock_timeout = '20s'"))
            conn.execute(text("TRUNCATE " + ", ".join(tables) + " RESTART IDENTITY CASCADE"))
        elif engine.dialect.name in ("mysql", "mariadb"):
            # A session a test forgot to close would make DELETE / ALTER wait: fail instead.
            conn.execute(text("SET SESSION innodb_lock_wait_timeout = 20, lock_wait_timeout = 20"))
            for name in [*tables, "billingworker_sequences"]:  # the last: MySQL-only, see store/bulk.py
                conn.execute(text(f"DELETE FROM {name}"))
            # Ids start again at 1, as after PostgreSQL's RESTART IDENTITY (InnoDB moves a value
            # below the largest id up to it, so this only resets tables that are now empty).
            for name in tables:
                conn.execute(text(f"ALTER TABLE {name} AUTO_INCREMENT = 1"))
        else:
            for name in tables:
                conn.execute(text(f"DELETE FROM {name}"))


@pytest.fixture
def pg_engine(pg_url) -> Iterator[Engine]:
    engine = _engine(pg_url)
    wipe(engine)
    yield engine


@pytest.fixture
def sqlite_engine(sqlite_url) -> Iterator[Engine]:
    engine = _engine(sqlite_url)
    wipe(engine)
    yield engine


@pytest.fixture
def mariadb_engine(mariadb_url) -> Iterator[Engine]:
    engine = _engine(mariadb_url)
    wipe(engine)
    yield engine


@pytest.fixture
def mysql8_forms_engine(mysql8_forms_url) -> Iterator[Engine]:
    engine = _engine(mysql8_forms_url)
    wipe(engine)
    with engine.connect() as conn:  # the first connection applies _as_mysql8
        assert not conn.dialect.insert_returning
    yield engine


@pytest.fixture(params=TEST_DATABASES)
def engine(request) -> Iterator[Engine]:
    """Each test that takes this runs on every database of ``TEST_DATABASES``."""
    yield request.getfixturevalue(_ENGINE_FIXTURES[request.param])


@pytest.fixture
def session(engine) -> Iterator[Session]:
    s = session_factory(engine)()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


@pytest.fixture(autouse=True)
def _fresh_test_gateway():
    """The test gateway remembers idempotency keys; ids start again at 1 in every test."""
    from billingworker.adapters.gateway import TEST_GATEWAY

    TEST_GATEWAY.__init__()
    yield


@pytest.fixture
def pg_session(pg_engine) -> Iterator[Session]:
    """A PostgreSQL-only session (concurrency tests), closed after the test."""
    s = session_factory(pg_engine)()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


#: The server databases of TEST_DATABASES: where concurrency tests (real row locks) run.
SERVER_DATABASES = [name for name in TEST_DATABASES if name != "sqlite"] or ["postgresql"]


@pytest.fixture(params=SERVER_DATABASES)
def server_engine(request) -> Iterator[Engine]:
    """PostgreSQL and/or MariaDB (per TEST_DATABASES): for tests of two sessions racing."""
    yield request.getfixturevalue(_ENGINE_FIXTURES[request.param])


@pytest.fixture
def server_session(server_engine) -> Iterator[Session]:
    """A session on ``server_engine``, closed after the test."""
    s = session_factory(server_engine)()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


@pytest.fixture
def mariadb_session(mariadb_engine) -> Iterator[Session]:
    """A MariaDB-only session (concurrency tests), closed after the test."""
    s = session_factory(mariadb_engine)()
    try:
        yield s
    finally:
        s.rollback()
        s.close()


def pytest_sessionfinish(session, exitstatus):
    for engine in _engines.values():
        engine.dispose()
    if "TEST_MYSQL_DATABASE" not in os.environ and _mysql_created:
        admin = create_engine(MYSQL_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                # A connection a test left in a transaction would make DROP wait forever: give up instead.
                conn.execute(text("SET SESSION lock_wait_timeout = 10"))
                for name in _mysql_created:
                    conn.execute(text(f"DROP DATABASE IF EXISTS `{name}`"))
        except Exception:  # noqa: BLE001 - a server that went away has nothing to clean
            pass
        finally:
            admin.dispose()
    if "TEST_PG_DATABASE" not in os.environ:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_TEST_DB}" WITH (FORCE)'))
        except Exception:  # noqa: BLE001 - a server that went away has nothing to clean
            pass
        finally:
            admin.dispose()
