"""The console as it is served (``billingworker console``, a real uvicorn process) over HTTP:
the client's address behind a named proxy, and a resend while the jobs' broker is down."""

from __future__ import annotations

import re

import httpx2 as httpx
from sqlalchemy import Engine, select

from billingworker.db import unit_of_work
from billingworker.domain.models import ConsoleAudit
from tests.console.seed import email_status, failed_email
from tests.redis_server import free_port

from .conftest import ADMIN, running_console

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def token_of(browser: httpx.Client, path: str) -> str:
    match = CSRF.search(browser.get(path).text)
    assert match, path
    return match.group(1)


def sign_in(browser: httpx.Client, password: str, forwarded_for: str | None = None) -> int:
    headers = {"X-Forwarded-For": forwarded_for} if forwarded_for else {}
    return browser.post("/sign-in", data={"username": ADMIN[0], "password": password, "next": "/queues",
                                          "csrf_token": token_of(browser, "/sign-in")}, headers=headers).status_code


def audit(engine: Engine, action: str) -> list[tuple[str, str, str]]:
    with unit_of_work(engine) as session:
        rows = session.execute(select(ConsoleAudit).where(ConsoleAudit.action == action).order_by(ConsoleAudit.id))
        return [(r.remote_addr, r.outcome, r.detail) for r in rows.scalars()]


def test_behind_a_named_proxy_the_clients_own_address_is_throttled_and_audited(pg_url, pg_engine, tmp_path):
    # Given the console behind a proxy on 127.0.0.1 that it was told to believe
    with running_console(pg_url, tmp_path, "--forwarded-allow-ips", "127.0.0.1") as server, \
            httpx.Client(base_url=server.url) as browser:
        # When someone fails three times with alice's name from one address behind the proxy
        assert [sign_in(browser, "guess-guess-guess", "203.0.113.9") for _ in range(3)] == [401] * 3
        assert sign_in(browser, ADMIN[1], "203.0.113.9") == 429
        # Then alice, behind the same proxy from her own address, signs in at once
        assert sign_in(browser, ADMIN[1], "198.51.100.20") == 303

    # And the audit log has each client's own address, not the proxy's
    assert [(addr, outcome) for addr, outcome, _ in audit(pg_engine, "sign_in")] == [
        ("203.0.113.9", "denied")] * 3 + [("198.51.100.20", "ok")]


def test_without_the_option_a_forwarded_address_is_not_believed(pg_url, pg_engine, tmp_path):
    with running_console(pg_url, tmp_path) as server, httpx.Client(base_url=server.url) as browser:
        assert sign_in(browser, "guess-guess-guess", "203.0.113.9") == 401
    assert [addr for addr, _, _ in audit(pg_engine, "sign_in")] == ["127.0.0.1"]


def test_a_resend_while_the_broker_is_down_is_done_and_says_the_relay_delivers_it(pg_url, pg_engine, tmp_path):
    # Given a failed email, and a console whose jobs' broker does not answer
    email_id = failed_email(pg_engine, None)
    down = f"redis://127.0.0.1:{free_port()}/0"
    with running_console(pg_url, tmp_path, broker_url=down) as server, httpx.Client(base_url=server.url) as browser:
        assert sign_in(browser, ADMIN[1]) == 303

        # When the operator resends it
        answer = browser.post(f"/outbox/{email_id}/resend", data={"csrf_token": token_of(browser, "/outbox")})
        page = browser.get("/outbox").text

        # Then she is told it is queued and the relay will deliver it (a warning, not an error)
        assert answer.status_code == 303
        (said,) = re.findall(r'class="flash (\w+)" role="status">([^<]*)<', page)
        assert said[0] == "warn" and "the broker did not answer" in said[1] and "relay" in said[1]
        # ... and a second click says it is already queued
        browser.post(f"/outbox/{email_id}/resend", data={"csrf_token": token_of(browser, "/outbox")})
        assert "nothing to resend: already queued for delivery" in browser.get("/outbox").text

    assert email_status(pg_engine, email_id) == "queued"
    assert [outcome for _, outcome, _ in audit(pg_engine, "resend")] == ["ok", "failed"]
