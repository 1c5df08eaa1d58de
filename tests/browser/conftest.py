"""The console served by a real uvicorn process, driven in Debian's headless Chromium through
Playwright (``executable_path``: no browser is downloaded), over real PostgreSQL and Redis, with
real ``dramatiq`` workers (tests/integration/conftest.py starts them).

Each page a test visits is saved under var/screenshots/ (ignored by git) for a person to look at.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from billingworker.domain.accounts.passwords import hash_password
from tests.integration.conftest import (  # noqa: F401 - fixtures: a real worker on the test run's Redis
    REDIS_URL,
    broker,
    mail_dir,
    redis_client,
    start_worker,
    worker,
)
from tests.redis_server import free_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "var" / "screenshots"
SECRET_KEY = "browser-tests-Qz8v3LmR7tXw2KpN9dHj4sBf6YcG"
ADMIN = ("alice", "alice-password-1")
#: Seconds the console may take to answer after it was started, and a page to change.
BOOT_TIMEOUT = 20.0
PAGE_TIMEOUT_MS = 20_000


@dataclass
class ConsoleServer:
    url: str
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def console_command() -> list[str]:
    """The installed ``billingworker console`` (else the package's ``python -m billingworker.console``)."""
    script = Path(sys.executable).parent / "billingworker"
    return [str(script), "console"] if script.exists() else [sys.executable, "-m", "billingworker.console"]


@contextmanager
def running_console(database_url: str, workdir: Path, *args: str, broker_url: str = REDIS_URL,
                    users: str | None = None) -> Iterator[ConsoleServer]:
    """``billingworker console`` (the Procfile's command) with ``args`` on a free port, the
    default host (127.0.0.1) unless ``args`` say otherwise; stopped on leaving."""
    port = free_port()
    log_path = workdir / f"console-{port}.log"
    env = {**os.environ, "DATABASE_URL": database_url, "BROKER_URL": broker_url, "SECRET_KEY": SECRET_KEY,
           "CONSOLE_USERS": users or f"{ADMIN[0]}:admin:{hash_password(ADMIN[1])}", "BILLING_TIME_ZONE": "UTC",
           "LOG_LEVEL": "warning", "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        proc = subprocess.Popen([*console_command(), "--port", str(port), *args], env=env,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=workdir,
                                start_new_session=True)
    server = ConsoleServer(f"http://127.0.0.1:{port}", proc, log_path)
    try:
        deadline = time.monotonic() + BOOT_TIMEOUT
        while True:
            try:
                with urllib.request.urlopen(f"{server.url}/healthz", timeout=1) as answer:
                    if answer.read() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the console did not start:\n{server.log()}", pytrace=False)
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def console_server(pg_url, pg_engine, redis_client, tmp_path) -> Iterator[ConsoleServer]:  # noqa: F811
    """``billingworker console`` on a free port of 127.0.0.1, over the test PostgreSQL and Redis."""
    with running_console(pg_url, tmp_path) as server:
        yield server


@pytest.fixture(scope="session")
def chromium():
    """Debian's Chromium, headless, through Playwright; fails (never skips) if it is missing."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (the browser tests need it)", pytrace=False)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@pytest.fixture
def browser_page(chromium):
    """A fresh browser context (no cookies) and its page."""
    context = chromium.new_context(viewport={"width": 1360, "height": 900})
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    page = context.new_page()
    yield page
    context.close()


def screenshot(page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


def sign_in(page, server: ConsoleServer, user: tuple[str, str] = ADMIN, *, shot: bool = False) -> None:
    page.goto(f"{server.url}/queues")
    assert "/sign-in" in page.url
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    if shot:
        screenshot(page, "00-sign-in")
    page.click("button:has-text('Sign in')")
    page.wait_for_url(f"{server.url}/queues")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach the console's output to the report of a failing test."""
    report = yield
    if report.failed and "console_server" in getattr(item, "funcargs", {}):
        report.sections.append(("console server output", item.funcargs["console_server"].log()))
    return report
