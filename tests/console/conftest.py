"""The console in-process (Starlette's TestClient) over the real databases of tests/conftest.py
(SQLite and PostgreSQL) and a Redis database of this test run's own.

``console_client(engine)`` builds the app with explicit arguments, as ``billingworker console``
does; ``sign_in`` goes through the sign-in form like a browser (CSRF token included).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
import redis
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from billingworker.console import create_app
from billingworker.console.auth import SignInThrottle, parse_users
from billingworker.db import unit_of_work
from billingworker.domain.accounts.passwords import hash_password
from billingworker.domain.models import ConsoleAudit
from tests.redis_server import run_redis_url

REDIS_URL = os.environ.get("TEST_CONSOLE_REDIS_URL") or run_redis_url(3)
SECRET = b"console-tests-" + b"k7Qp2xZr9LmW4vB8nT3yH6jD" * 2
PASSWORDS = {"alice": "alice-password-1", "victor": "victor-password-1"}
USERS = parse_users(f"alice:admin:{hash_password(PASSWORDS['alice'])};"
                    f"victor:viewer:{hash_password(PASSWORDS['victor'])}")
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Clock:
    """The console's clock and the throttle's, moved by the test (no sleeping)."""

    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    mono: float = 1000.0

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.mono += seconds


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    client.ping()
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def redis_broker(redis_client) -> Iterator[RedisBroker]:
    """A Dramatiq broker on the test Redis, to put messages where a worker would."""
    broker = RedisBroker(url=REDIS_URL)
    for queue in ("billing", "emails"):
        broker.declare_queue(queue)
    yield broker
    broker.close()


@pytest.fixture
def console_client(clock, redis_client) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    throttle = SignInThrottle(clock=lambda: clock.mono)

    def make(engine: Engine, *, broker_url: str = REDIS_URL, address: str = "testclient") -> TestClient:
        """A browser at ``address``; the consoles of one test share one sign-in throttle, as the
        browsers of one console process do."""
        app = create_app(engine=engine, broker_url=broker_url, users=USERS, secret_key=SECRET,
                         throttle=throttle, now=lambda: clock.now)
        client = TestClient(app, base_url="http://testserver", follow_redirects=False, client=(address, 50000))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def csrf_of(client: TestClient, path: str = "/sign-in") -> str:
    page = client.get(path)
    match = CSRF.search(page.text)
    assert match, f"no CSRF token on {path} ({page.status_code})"
    return match.group(1)


def sign_in(client: TestClient, name: str = "alice", password: str | None = None):
    token = csrf_of(client)
    return client.post("/sign-in", data={"username": name, "password": password or PASSWORDS[name],
                                         "csrf_token": token, "next": "/queues"})


def signed_in(client: TestClient, name: str = "alice") -> str:
    """Sign ``client`` in as ``name``; returns a CSRF token of the session."""
    response = sign_in(client, name)
    assert response.status_code == 303, response.text
    return csrf_of(client, "/audit")


def audit_rows(engine: Engine, action: str | None = None) -> list[SimpleNamespace]:
    """The audit rows, oldest first, read inside the session (plain objects)."""
    with unit_of_work(engine) as session:
        stmt = select(ConsoleAudit).order_by(ConsoleAudit.id)
        if action:
            stmt = stmt.where(ConsoleAudit.action == action)
        return [SimpleNamespace(**{c.key: getattr(r, c.key) for c in ConsoleAudit.__table__.columns})
                for r in session.execute(stmt).scalars()]


def audit_count(engine: Engine) -> int:
    with unit_of_work(engine) as session:
        return session.execute(select(func.count()).select_from(ConsoleAudit)).scalar_one()
