"""Shared fixtures: real SQLite and real PostgreSQL databases, migrated by Alembic.

Domain tests take the ``engine`` fixture, which runs each test once per database. PostgreSQL
must answer: a missing server fails the run (CI must never pass by skipping).
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
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import Session

from billingworker.db import create_db_engine, session_factory
from billingworker.domain.models import Base
from billingworker.migrate import upgrade_engine

PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
# One database per test run, so that two runs on one server (a developer and CI) never meet.
PG_TEST_DB = os.environ.get("TEST_PG_DATABASE", f"billingworker_test_{os.getpid()}")
PG_URL = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + PG_TEST_DB


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


@pytest.fixture(scope="session")
def pg_url() -> str:
    _create_pg_database()
    engine = create_db_engine(PG_URL)
    upgrade_engine(engine)
    engine.dispose()
    return PG_URL


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.sqlite3'}"
    engine = create_db_engine(url)
    upgrade_engine(engine)
    engine.dispose()
    return url


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


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request) -> Iterator[Engine]:
    """Each test that takes this runs on SQLite and on PostgreSQL."""
    fixture = "sqlite_engine" if request.param == "sqlite" else "pg_engine"
    yield request.getfixturevalue(fixture)


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


def pytest_sessionfinish(session, exitstatus):
    for engine in _engines.values():
        engine.dispose()
    if "TEST_PG_DATABASE" not in os.environ:
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{PG_TEST_DB}" WITH (FORCE)'))
        except Exception:  # noqa: BLE001 - a server that went away has nothing to clean
            pass
        finally:
            admin.dispose()
