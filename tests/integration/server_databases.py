"""Run a worker test once per server database of TEST_DATABASES (PostgreSQL, MariaDB, and
MariaDB taking the MySQL 8 forms) instead of on PostgreSQL only: a test module imports these
three fixtures, which replace ``pg_url`` and ``pg_engine`` (the database ``start_worker`` gives
its workers) for that module alone.

    from .server_databases import on_each_server_database, server_database_engine, server_database_url  # noqa: F401
"""

from __future__ import annotations

import pytest

from tests.conftest import _ENGINE_FIXTURES, SERVER_DATABASES


@pytest.fixture(params=SERVER_DATABASES, name="database")
def on_each_server_database(request) -> str:
    return request.param


@pytest.fixture(name="pg_url")
def server_database_url(database, request) -> str:
    return request.getfixturevalue(_ENGINE_FIXTURES[database].replace("_engine", "_url"))


@pytest.fixture(name="pg_engine")
def server_database_engine(database, request):
    return request.getfixturevalue(_ENGINE_FIXTURES[database])
