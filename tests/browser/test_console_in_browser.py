"""An operator's day in the console, in a real headless Chromium, against a real uvicorn server,
PostgreSQL, Redis and a real ``dramatiq`` worker: sign in, watch the daily run progress without
reloading, correct and requeue a dead letter and see the invoice appear, unpark a client, have an
action without its CSRF token refused; and, signed out, every page refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from billingworker.domain.models import OutboxEmail
from billingworker.ops.samples import record_sample_to
from tests import factories as f
from tests.integration.conftest import NAMESPACE, message, scalar, wait_for
from tests.ops.conftest import add_parked_client

from .conftest import screenshot, sign_in

pytestmark = pytest.mark.browser

PAGES = ["/queues", "/retries", "/dead-letters", "/runs", "/runs/preview", "/parked", "/outbox", "/clients",
         "/audit", "/runs/1", "/clients/1", "/dead-letters/billing/x", "/queues/live", "/runs/today/live"]


def today():
    return datetime.now(UTC).date()


def due_clients(engine, n: int, prefix: str) -> list[int]:
    with Session(engine, expire_on_commit=False) as s:
        clients = [f.client(s, email=f"{prefix}{k}@example.com", company_name=f"{prefix.title()} {k} Ltd")
                   for k in range(n)]
        for k, c in enumerate(clients):
            f.service(s, c, next_due_date=today() + timedelta(days=5), domain=f"{prefix}{k}.example")
        s.commit()
        return [c.id for c in clients]


def test_an_operator_watches_the_run_requeues_a_corrected_dead_letter_and_unparks_a_client(
        console_server, worker, broker, redis_client, pg_engine, browser_page):
    page, url = browser_page, console_server.url
    # Given seven clients with a service due (three batches of three), a parked client, a failed email
    due_clients(pg_engine, 7, "due")
    parked_id = add_parked_client(pg_engine, reason="generate_due_invoices: currency_id None client has no currency")
    with Session(pg_engine) as s:
        s.add(OutboxEmail(client_id=parked_id, template="invoice_created", context='{"invoice_id": 1}',
                          status="failed", attempts=3, last_error="SMTP 550 mailbox unavailable"))
        s.commit()

    # ... and a depth sample as the scheduler takes them, before the run
    record_sample_to(redis_client, datetime.now(UTC) - timedelta(minutes=3))

    # When the operator signs in
    sign_in(page, console_server, shot=True)
    assert page.locator("header").inner_text().count("alice (admin)") == 1
    screenshot(page, "01-queues")

    # ... previews today's run: seven invoices of 10.00 USD, nothing written
    page.goto(f"{url}/runs")
    page.click("button:has-text('Dry run')")
    generate = page.locator("table[data-preview-summary] tr", has_text="generate_due_invoices")
    assert re.search(r"generate_due_invoices\s+7\s+7\b", generate.inner_text())
    assert "70.00 USD" in generate.inner_text()
    screenshot(page, "04-dry-run-preview")
    assert scalar(pg_engine, "SELECT count(*) FROM invoices") == 0

    # ... opens Daily runs, and the day's run starts while the page is open
    page.goto(f"{url}/runs")
    assert "No daily run for" in page.locator("#today").inner_text()
    page.evaluate("window.notReloaded = true")
    broker.enqueue(message("run_daily_automation", trigger="cron"))

    # Then the page follows the run by itself until it succeeded, every batch counted
    page.wait_for_selector("#today [data-run-status]:has-text('succeeded')", timeout=60_000)
    assert page.evaluate("window.notReloaded") is True
    # ... and the history, refreshed with it, lists the same run (never "No daily run yet" beside it)
    run_link = page.locator("#today a[href^='/runs/']").first.get_attribute("href")
    page.wait_for_selector(f"#history a[href='{run_link}']")
    assert "No daily run yet" not in page.locator("#history").inner_text()
    generate = page.locator("#today tr[data-task='generate_due_invoices']")
    assert "3 of 3" in generate.inner_text()
    assert re.search(r"\b7\b", generate.inner_text())  # seven invoices
    screenshot(page, "02-daily-runs")
    page.click("#today a[href^='/runs/']")
    screenshot(page, "03-daily-run")

    # Given a generate_due_invoices for a client id that does not exist: refused, dead-lettered
    (late_id,) = due_clients(pg_engine, 1, "late")
    broker.enqueue(message("generate_due_invoices", client_id=999999))
    wait_for(lambda: redis_client.zcard(f"{NAMESPACE}:billing.XQ") == 1, "the refused message to be dead-lettered")
    letter = redis_client.zrange(f"{NAMESPACE}:billing.XQ", 0, -1)[0].decode()
    record_sample_to(redis_client, datetime.now(UTC) - timedelta(minutes=1))

    # When the operator corrects client_id on the Dead letters page and requeues it
    page.goto(f"{url}/dead-letters")
    row = page.locator(f"tr[data-letter='{letter}']")
    assert "refused:" in row.inner_text() and "999999" in row.inner_text()
    screenshot(page, "05-dead-letters")
    row.locator("textarea[name=set]").fill(f"client_id={late_id}")
    row.locator("button:has-text('Requeue')").click()
    page.wait_for_url(f"{url}/dead-letters")
    assert "with client_id corrected" in page.locator(".flash").inner_text()

    # Then the worker bills that client: the invoice appears on its page
    wait_for(lambda: scalar(pg_engine, "SELECT count(*) FROM invoices WHERE client_id = :c", c=late_id) == 1,
             "the corrected message to create the invoice")
    assert redis_client.zcard(f"{NAMESPACE}:billing.XQ") == 0
    page.goto(f"{url}/clients/{late_id}")
    unpaid = page.locator("table[data-invoices] tr", has_text="Unpaid")
    assert re.search(r"Unpaid \(due\)\s+1\s", unpaid.inner_text())
    screenshot(page, "06-client")

    # When an unpark form is sent without its CSRF token (a forged request)
    page.goto(f"{url}/parked")
    screenshot(page, "07-failures-and-parked")
    form = page.locator(f"tr[data-client='{parked_id}'] form")
    form.locator("input[name=csrf_token]").evaluate("input => input.remove()")
    form.locator("button").click()

    # Then it is refused and the client stays parked
    assert "CSRF" in page.locator(".flash.error").inner_text()
    screenshot(page, "08-refused-without-csrf")
    assert scalar(pg_engine, "SELECT parked_at FROM clients WHERE id = :c", c=parked_id) is not None

    # When the operator unparks it properly
    page.goto(f"{url}/parked")
    page.locator(f"tr[data-client='{parked_id}'] button:has-text('Unpark')").click()
    page.wait_for_url(f"{url}/parked")
    assert f"client {parked_id} unparked" in page.locator(".flash").inner_text()
    assert page.locator("[data-no-parked]").is_visible()
    assert scalar(pg_engine, "SELECT parked_at FROM clients WHERE id = :c", c=parked_id) is None

    # The other pages, as they are now (a second sample, after the run, for the charts)
    record_sample_to(redis_client, datetime.now(UTC))
    for path, name in (("/queues", "09-queues-after"), ("/retries", "10-retries"), ("/outbox", "11-outbox"),
                       ("/audit", "12-audit-log")):
        page.goto(f"{url}{path}")
        screenshot(page, name)
    audit = page.locator("table[data-audit]").inner_text()
    assert "unpark" in audit and "requeue" in audit and "refused" in audit and "sign_in" in audit
    page.goto(f"{url}/queues")
    assert page.locator("svg.chart").count() == 2 and page.locator("svg.chart polyline").count() >= 2


def test_signed_out_every_page_is_refused(console_server, browser_page):
    page, url = browser_page, console_server.url
    for path in PAGES:
        page.goto(f"{url}{path}")
        assert re.search(r"/sign-in\?next=", page.url), path
        assert page.locator("h1").inner_text() == "Sign in", path
    screenshot(page, "13-signed-out")
    refused = page.request.post(f"{url}/parked/1/unpark", form={"csrf_token": "x"}, max_redirects=0)
    assert refused.status == 403
    assert page.request.get(f"{url}/healthz").text() == "ok"
