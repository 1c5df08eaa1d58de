"""What the pages show, from real rows and real Redis keys, and that hostile content (a dead
letter's arguments, a failure's reason, a client's name, a user name typed at sign-in) is shown
as text, never run."""

from __future__ import annotations

import re
from datetime import timedelta

from dramatiq import Message

from billingworker.db import unit_of_work
from billingworker.domain.models import Client, JobFailure
from billingworker.ops.samples import record_sample_to
from tests import factories as f
from tests.ops.conftest import add_parked_client, add_run, kill

from .conftest import sign_in, signed_in

HOSTILE = "<script>alert(1)</script>"
HOSTILE_IMG = '<img src=x onerror="alert(2)">'


def test_hostile_message_and_row_content_is_escaped_on_every_page(engine, console_client, redis_broker, clock):
    # Given a dead letter whose arguments carry markup, a failure and a parked client with markup
    msg = Message(queue_name="billing", actor_name="apply_payment", args=(),
                  kwargs={"invoice_id": 7, "note": HOSTILE}, options={})
    letter = kill(redis_broker, msg)
    retry = Message(queue_name="billing", actor_name="apply_payment", args=(), kwargs={"note": HOSTILE_IMG},
                    options={})
    redis_broker.enqueue(retry, delay=3_600_000)
    client_id = add_parked_client(engine, reason=f"generate: {HOSTILE_IMG}")
    with unit_of_work(engine) as session:
        session.get(Client, client_id).company_name = HOSTILE
        session.add(JobFailure(actor="apply_payment", message_id=msg.message_id, client_id=client_id,
                               error="ValidationError", field="note", reason=HOSTILE_IMG, created_at=clock.now))
        session.commit()
    client = console_client(engine)
    sign_in(client, HOSTILE, "wrong-password")  # the audit log shows the name typed
    signed_in(client)

    # When every page that shows them is read
    pages = {path: client.get(path) for path in ("/dead-letters", f"/dead-letters/billing/{letter}", "/retries",
                                                 "/parked", f"/clients/{client_id}", "/audit", "/queues")}

    # Then the markup is there as text only
    for path, page in pages.items():
        assert page.status_code == 200, path
        assert "<script>alert" not in page.text and "<img src=x" not in page.text, path
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["/dead-letters"].text
    assert "&lt;script&gt;" in pages[f"/dead-letters/billing/{letter}"].text
    assert "&lt;img src=x onerror=" in pages["/retries"].text
    assert "&lt;img src=x onerror=" in pages["/parked"].text and "&lt;script&gt;" in pages["/parked"].text
    assert "&lt;script&gt;" in pages[f"/clients/{client_id}"].text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in pages["/audit"].text


def test_queues_page_shows_the_counts_workers_and_charts(engine, console_client, redis_broker, redis_client, clock):
    # Given one dead letter, two waiting messages, one retry and two samples a minute apart
    kill(redis_broker, Message(queue_name="billing", actor_name="apply_payment", args=(), kwargs={}, options={}))
    for _ in range(2):
        redis_broker.enqueue(Message(queue_name="billing", actor_name="apply_payment", args=(), kwargs={},
                                     options={}))
    redis_broker.enqueue(Message(queue_name="emails", actor_name="deliver_emails", args=(), kwargs={}, options={}),
                         delay=60_000)
    record_sample_to(redis_client, clock.now - timedelta(minutes=2))
    record_sample_to(redis_client, clock.now - timedelta(minutes=1))
    client = console_client(engine)
    signed_in(client)

    page = client.get("/queues").text
    live = client.get("/queues/live").text
    charts = client.get("/queues/charts").text

    assert 'data-queue="billing"' in live and 'hx-get="/queues/live"' in page
    billing = live.split('data-queue="billing"', 1)[1].split("</tr>", 1)[0]
    assert '<td class="num" data-waiting>2</td>' in billing
    assert ">1</a></td>" in billing  # one dead letter, linked
    emails = live.split('data-queue="emails"', 1)[1].split("</tr>", 1)[0]
    assert '<a href="/retries">1</a>' in emails
    assert "<svg" in charts and "<polyline" in charts and "Depth (messages)" in charts
    assert "<svg" in page


def test_runs_page_shows_todays_run_live_and_the_history(engine, console_client, clock):
    earlier = add_run(engine, status="succeeded", run_date=clock.now.date() - timedelta(days=1), invoices=4)
    today = add_run(engine, status="running", finished_hours_ago=None, run_date=clock.now.date(), invoices=2)
    client = console_client(engine)
    signed_in(client)

    page = client.get("/runs").text
    live = client.get("/runs/today/live").text
    one = client.get(f"/runs/{today}").text

    assert f'href="/runs/{earlier}"' in page and f'href="/runs/{today}"' in page
    assert "running" in live and 'data-task="generate"' in live and "2 of 2" in live
    assert f'hx-get="/runs/{today}/live"' in one
    assert client.get("/runs/999999").status_code == 404


def test_dry_run_preview_shows_each_task_and_amounts_per_currency(engine, console_client, clock):
    # Given a USD client and a GBP client, each with a 10.00 service due in five days
    day = clock.now.date()
    with unit_of_work(engine) as session:
        usd, gbp = f.currency(session, "USD", is_default=True), f.currency(session, "GBP")
        for currency in (usd, gbp):
            customer = f.client(session, currency_id=currency.id, email=f"{currency.code}@example.com")
            f.service(session, customer, next_due_date=day + timedelta(days=5))
        session.commit()
    client = console_client(engine)
    signed_in(client)

    page = client.get(f"/runs/preview?day={day.isoformat()}").text

    summary = page.split("data-preview-summary", 1)[1].split("</table>", 1)[0]
    generate = summary.split("generate_due_invoices", 2)[2].split("</tr>", 1)[0]
    assert "10.00 GBP" in generate and "10.00 USD" in generate and "20.00" not in generate
    assert 'data-preview-lines="generate_due_invoices"' in page
    assert client.get("/runs/preview?day=2026-13-45").text.count("is not a date") == 1
    # and while one preview is being computed, another is refused, not started beside it
    from billingworker.console.pages.runs import PREVIEW_RUNNING

    with PREVIEW_RUNNING:
        busy = client.get(f"/runs/preview?day={day.isoformat()}").text
    assert "a preview is already running" in busy and "data-preview-summary" not in busy
    assert "data-preview-summary" in client.get(f"/runs/preview?day={day.isoformat()}").text


def test_client_page_shows_the_summary_and_the_statement(engine, console_client):
    with unit_of_work(engine) as session:
        customer = f.client(session, company_name="Analytical Ltd", credit_balance="12.50")
        session.commit()
        client_id = customer.id
    client = console_client(engine)
    signed_in(client)

    page = client.get(f"/clients/{client_id}").text

    assert "Analytical Ltd" in page and "$12.50 USD" in page and "data-statement" in page
    assert "Opening balance" in page and "Closing balance" in page
    assert client.get("/clients/999999").status_code == 404
    assert client.get("/clients?id=7").headers["location"] == "/clients/7"


def test_audit_page_lists_actions_newest_first(engine, console_client):
    client_id = add_parked_client(engine)
    client = console_client(engine)
    token = signed_in(client)
    client.post(f"/parked/{client_id}/unpark", data={"csrf_token": token})

    page = client.get("/audit").text

    rows = page.split("<tbody>", 1)[1]
    assert rows.index("unpark") < rows.index("sign_in")
    assert f"client {client_id}" in rows and "outcome-ok" in rows


def test_a_broker_that_does_not_answer_is_reported_on_the_pages_not_a_crash(engine, console_client):
    from tests.redis_server import free_port

    client = console_client(engine, broker_url=f"redis://127.0.0.1:{free_port()}/0")
    signed_in(client)

    for path in ("/queues", "/retries", "/dead-letters"):
        page = client.get(path)
        assert page.status_code == 200, path
        assert "ConnectionError" in page.text or "Connection refused" in page.text, path
    # One dead letter's page says the broker could not be read (503), not a server error
    one = client.get("/dead-letters/billing/some-letter")
    assert one.status_code == 503 and "Could not read the broker (dead letters): ConnectionError" in one.text


HUGE = "99999999999999999999"


def test_ids_and_days_no_row_can_have_are_answered_not_crashed_on(engine, console_client):
    client = console_client(engine)
    signed_in(client)

    # An id in a path: not found
    for path in (f"/clients/{HUGE}", f"/runs/{HUGE}", f"/runs/{HUGE}/live", "/runs/2147483648"):
        page = client.get(path)
        assert page.status_code == 404 and "There is no" in page.text, path
    # An id in a query: a bad request naming the parameter
    for path, name in ((f"/outbox?client={HUGE}", "client"), (f"/parked?client={HUGE}", "client"),
                       (f"/parked?run={HUGE}", "run"), ("/parked?run=abc", "run")):
        page = client.get(path)
        assert page.status_code == 400 and f"{name}: " in page.text and "is not an id" in page.text, path
    assert "is not a client id" in client.get(f"/clients?id={HUGE}").text
    # A day beyond what a statement or a dry run can reach: said, with the default range shown
    client_id = add_parked_client(engine)
    page = client.get(f"/clients/{client_id}?from=9999-12-31")
    assert page.status_code == 200 and "from: 9999-12-31 is out of range" in page.text
    preview = client.get("/runs/preview?day=9999-12-31")
    assert preview.status_code == 200 and "day: 9999-12-31 is out of range" in preview.text


def test_audit_page_refuses_a_user_filter_no_name_can_be(engine, console_client):
    client = console_client(engine)
    signed_in(client)

    page = client.get("/audit?user=%00")

    assert page.status_code == 400 and "user: not a user name" in page.text
    assert client.get("/audit?user=alice").status_code == 200


def test_the_runs_page_poll_refreshes_the_history_with_todays_run(engine, console_client, clock):
    # Given the Daily runs page opened before today's run started
    client = console_client(engine)
    signed_in(client)
    assert "No daily run yet." in client.get("/runs").text

    # When the run starts and the page polls
    run_id = add_run(engine, status="running", finished_hours_ago=None, run_date=clock.now.date(), invoices=1)
    poll = client.get("/runs/today/live").text

    # Then the poll's answer carries the history too (swapped out of band), with the new run
    history = poll.split('<div id="history" hx-swap-oob="true">', 1)[1]
    assert f'<tr data-run="{run_id}">' in history and "No daily run yet." not in poll
    assert f'href="/runs/{run_id}"' in poll.split('<div id="history"', 1)[0]


def test_chart_legend_and_title_do_not_overlap():
    from billingworker.console.charts import LEGEND_CHAR_WIDTH, Series, line_chart

    series = [Series(f"{q} processed/min", [(0, 1.0), (60_000, 2.0)]) for q in ("billing", "emails")]
    svg = str(line_chart("Throughput (messages per minute)", series))

    # Each text's box: x from its start, width by character count, on its baseline
    boxes = {text: (float(x), float(y), len(text) * LEGEND_CHAR_WIDTH)
             for x, y, text in re.findall(r'<text x="([\d.]+)" y="([\d.]+)">([^<]+)</text>', svg)}
    title = boxes["Throughput (messages per minute)"]
    legend = [boxes["billing processed/min"], boxes["emails processed/min"]]
    for x, y, width in legend:
        same_line = abs(y - title[1]) < 12
        assert not (same_line and x < title[0] + title[2] and title[0] < x + width)
    (first, second) = sorted(legend)
    assert first[0] + first[2] < second[0]
