"""``billingworker status``: the queue counts Dramatiq's keys hold, the workers, the daily runs."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, date, datetime
from pathlib import Path

import pika
import pytest
from dramatiq.brokers.rabbitmq import RabbitmqBroker

from billingworker.db import unit_of_work
from billingworker.domain.models.runs import DailyRunReconciliation
from billingworker.ops.consumers import CONSUMERS_KEY
from billingworker.ops.queues import read_broker_state, read_redis_state, safe_url

from .conftest import (
    NAMESPACE,
    RABBITMQ_URL,
    REDIS_URL,
    add_parked_client,
    add_run,
    cli,
    db_url,
    kill,
    message,
    take,
)


def test_status_json_counts_what_dramatiq_put_in_redis(redis_broker, redis_client, engine):
    # Given: on billing, one dead letter, one message a worker holds, two waiting (the first
    # enqueued two minutes ago) and one retry waiting for its backoff; nothing on emails
    kill(redis_broker, message())
    redis_broker.enqueue(message())
    consumer, _held = take(redis_broker)
    redis_broker.enqueue(message(age_s=120))
    redis_broker.enqueue(message())
    redis_broker.enqueue(message(), delay=60_000)
    # ... and a worker that stopped beating two minutes ago
    redis_client.zadd(f"{NAMESPACE}:__heartbeats__", {"gone-worker": int(time.time() * 1000) - 120_000})
    # ... and one consuming worker (the test's broker only enqueued: it is no worker)
    redis_client.zadd(CONSUMERS_KEY, {"host:1:a": int(time.time() * 1000) - 5_000})
    # ... and in the database, a run with two failures and a parked client
    run_id = add_run(engine, failures=2, invoices=5)
    client_id = add_parked_client(engine)

    # When
    result = cli(engine, "status", "--json")

    # Then
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["errors"] == []
    queues = {q["queue"]: q for q in status["queues"]}
    billing = queues["billing"]
    assert (billing["waiting"], billing["delayed"], billing["in_progress"], billing["dead"]) == (2, 1, 1, 1)
    assert 119 <= billing["oldest_age_seconds"] < 180
    emails = queues["emails"]
    assert (emails["waiting"], emails["delayed"], emails["in_progress"], emails["dead"]) == (0, 0, 0, 0)
    assert emails["oldest_age_seconds"] == 0
    # only the consumer counts, not the test's own broker that beat within the last minute
    consumers = status["broker"].pop("consumers")
    assert status["broker"] == {"kind": "redis", "url": REDIS_URL, "workers": 1, "note": ""}
    assert [c["id"] for c in consumers] == ["host:1:a"]
    [run] = status["daily_runs"]
    assert (run["id"], run["status"], run["failures"], run["dry_run"]) == (run_id, "succeeded", 2, False)
    assert run["tasks"][0]["counts"]["invoices_created"] == 5
    assert status["parked_clients"]["total"] == 1
    [parked] = status["parked_clients"]["clients"]
    assert (parked["id"], parked["name"], parked["reason"]) == (client_id, "Analytical Ltd (Ada Lovelace)",
                                                                "generate: no currency")
    consumer.close()


def test_status_table_is_readable(redis_broker, pg_engine):
    redis_broker.enqueue(message(age_s=3700))
    add_run(pg_engine, failures=1)
    add_parked_client(pg_engine)

    result = cli(pg_engine, "status")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"Broker {REDIS_URL} (redis): live workers 0"
    header = next(line for line in lines if line.startswith("queue"))
    billing = next(line for line in lines if line.startswith("billing"))
    assert header.split("  ")[0] == "queue" and "oldest waiting" in header
    assert billing.split()[:5] == ["billing", "1", "0", "0", "0"] and "1h 01m" in billing
    assert any("succeeded" in line for line in lines)
    assert any(line.startswith("generate") for line in lines)
    assert any("Analytical Ltd" in line for line in lines)


def test_status_with_no_runs_and_an_empty_broker(redis_client, pg_engine):
    result = cli(pg_engine, "status", "--json")

    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert status["daily_runs"] == [] and status["parked_clients"] == {"total": 0, "clients": []}
    assert status["broker"]["workers"] == 0
    assert "Daily runs: none yet" in cli(pg_engine, "status").output
    assert status["books"] is None
    assert "Books: no daily run yet" in cli(pg_engine, "status").output


def test_status_says_whether_the_last_run_left_the_books_clean(redis_client, engine):
    # Given an older run whose books were clean, and the latest, whose reconciliation found two
    # things to look at (and one it could explain)
    older = add_run(engine, run_date=date(2026, 1, 14))
    latest = add_run(engine, run_date=date(2026, 1, 15))
    with unit_of_work(engine) as session:
        for run_id, day, clean, counts in [
                (older, date(2026, 1, 14), True, {"due_billed": {"findings": 0, "explained": 0}}),
                (latest, date(2026, 1, 15), False, {"due_billed": {"findings": 2, "explained": 1},
                                                    "numbers_gap_free": {"findings": 1, "explained": 0}})]:
            session.add(DailyRunReconciliation(run_id=run_id, as_of=day, clean=clean, counts=json.dumps(counts),
                                               checked_at=datetime(2026, 1, 16, 3, 0, tzinfo=UTC)))
        session.commit()

    status = json.loads(cli(engine, "status", "--json").output)
    screen = cli(engine, "status").output

    # Then status names the latest run's verdict, the findings an operator must look at (the ones
    # no failure explains: "findings" counts them apart from "explained"), and how
    assert status["books"] == {"run_id": latest, "as_of": "2026-01-15", "checked_at": "2026-01-16T03:00:00+00:00",
                               "clean": False, "findings": 3,
                               "latest_run": {"id": latest, "status": "succeeded", "reconciled": True}}
    line = " ".join(screen.split("Books:", 1)[1].split())  # the line may wrap at the terminal's width
    assert "NOT CLEAN as of 2026-01-15" in line and f"run #{latest}" in line and "3 finding(s)" in line
    assert "billingworker reconcile --as-of 2026-01-15" in line and "has not checked" not in line

    # and a newer run still running (it records its reconciliation when it finishes) is named as
    # not having checked them: the verdict shown is an earlier run's
    running = add_run(engine, run_date=date(2026, 1, 16), status="running", finished_hours_ago=None)
    books = json.loads(cli(engine, "status", "--json").output)["books"]
    assert books["run_id"] == latest and books["latest_run"] == {"id": running, "status": "running",
                                                                 "reconciled": False}
    screen = " ".join(cli(engine, "status").output.split())  # the line may wrap at the terminal's width
    assert f"lists them; run #{running} (running) has not checked them" in screen


def test_status_reports_what_does_not_answer_and_exits_1(pg_engine):
    result = cli(pg_engine, "status", "--json", broker_url="redis://127.0.0.1:1/0")

    assert result.exit_code == 1
    status = json.loads(result.output)
    assert status["errors"][0].startswith("broker: ConnectionError")
    assert status["queues"] == [] and status["daily_runs"] == []  # the database still answered


def test_status_on_rabbitmq_counts_ready_dead_and_delayed_and_says_na_for_the_rest():
    queue = f"ops_test_{uuid.uuid4().hex[:8]}"
    # Confirmed publishes: each enqueue returns once RabbitMQ has counted the message.
    broker = RabbitmqBroker(url=RABBITMQ_URL, confirm_delivery=True)
    try:
        broker.declare_queue(queue)
        broker.enqueue(message(queue=queue))
        broker.enqueue(message(queue=queue))
        broker.enqueue(message(queue=queue), delay=60_000)

        state = read_broker_state(RABBITMQ_URL, (queue, "ops_test_never_declared"))

        assert state.kind == "rabbitmq" and state.url == safe_url(RABBITMQ_URL) == "amqp://guest:***@127.0.0.1:5672/%2F"
        declared, missing = state.queues
        assert (declared.waiting, declared.delayed, declared.dead) == (2, 1, 0)
        assert declared.in_progress is None and declared.oldest_age_seconds is None
        assert missing.waiting == 0 and "not declared yet" in missing.note
        assert state.workers == 0
    finally:
        connection = pika.BlockingConnection(pika.URLParameters(RABBITMQ_URL))
        channel = connection.channel()
        for name in (queue, f"{queue}.DQ", f"{queue}.XQ"):
            channel.queue_delete(name)
        connection.close()
        broker.close()


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@redis.internal:6379/0", "redis://:***@redis.internal:6379/0"),
    ("amqp://billing:pw@mq/vhost", "amqp://billing:***@mq/vhost"),
    ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
])
def test_broker_urls_are_shown_without_their_password(url, shown):
    assert safe_url(url) == shown


def test_live_workers_follow_the_heartbeat_timeout_the_workers_are_given(redis_client, monkeypatch):
    now_ms = int(time.time() * 1000)
    redis_client.zadd(CONSUMERS_KEY, {"w1": now_ms - 5_000, "w2": now_ms - 30_000})

    assert read_redis_state(redis_client, now_ms=now_ms).workers == 2
    monkeypatch.setenv("BROKER_HEARTBEAT_TIMEOUT_MS", "10000")
    assert read_redis_state(redis_client, now_ms=now_ms).workers == 1


# --- status --watch -----------------------------------------------------------------------------

def _read_until(fd: int, pattern: str, seen: list[str], deadline_s: float = 30.0) -> str:
    """Read the terminal's output until ``pattern`` (a regex) is in what was read since the call."""
    start = len(seen)
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                seen.append(os.read(fd, 65536).decode(errors="replace"))
            except OSError:  # the process closed the terminal
                break
            if re.search(pattern, "".join(seen[start:])):
                return "".join(seen[start:])
    pytest.fail(f"no {pattern!r} on the screen; it shows:\n{''.join(seen)[-3000:]}")


def test_status_watch_redraws_in_a_terminal_until_ctrl_c(redis_broker, pg_engine):
    # Given: `status --watch` in a real terminal (a pty), an empty billing queue on its screen
    env = {**os.environ, "BROKER_URL": REDIS_URL, "DATABASE_URL": db_url(pg_engine), "COLUMNS": "150",
           "TERM": "xterm"}
    controller, terminal = pty.openpty()
    script = Path(sys.executable).parent / "billingworker"
    proc = subprocess.Popen([str(script), "status", "--watch", "--interval", "0.2"], stdin=terminal, stdout=terminal,
                            stderr=terminal, env=env, start_new_session=True)
    os.close(terminal)
    seen: list[str] = []
    try:
        _read_until(controller, r"billing\s+0\s+0\s+0\s+0[\s\S]*Daily runs: none yet", seen)

        # When a message is dead-lettered and two more arrive
        kill(redis_broker, message())
        redis_broker.enqueue(message())
        redis_broker.enqueue(message())

        # Then the same screen is redrawn with them (cursor moved back up: rich Live, not a scroll)
        redrawn = _read_until(controller, r"billing\s+2\s+0\s+0\s+1[\s\S]*Daily runs: none yet", seen)
        assert "\x1b[1A\x1b[2K" in redrawn

        # When the operator presses Ctrl-C: it stops quietly
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    assert "Traceback" not in "".join(seen)


def test_status_watch_and_json_do_not_mix(redis_client, pg_engine):
    result = cli(pg_engine, "status", "--watch", "--json")

    assert result.exit_code == 2
    assert "--watch draws the screen; --json prints one document: choose one" in result.output


def test_status_watch_off_a_terminal_prints_each_screen_under_its_time(redis_broker, pg_engine):
    # Given: `status --watch` writing to a pipe (a log file, a `| tee`)
    env = {**os.environ, "BROKER_URL": REDIS_URL, "DATABASE_URL": db_url(pg_engine)}
    env.pop("COLUMNS", None)
    script = Path(sys.executable).parent / "billingworker"
    proc = subprocess.Popen([str(script), "status", "--watch", "--interval", "0.2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=env, start_new_session=True)
    seen: list[str] = []
    try:
        _read_until(proc.stdout.fileno(), r"billing\s+0\s+0\s+0\s+0", seen)
        redis_broker.enqueue(message())

        # Then the next screens show the message, printed after the earlier ones, without control codes
        _read_until(proc.stdout.fileno(), r"billing\s+1\s+0\s+0\s+0", seen)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen)
    assert "\x1b[" not in output
    assert len(re.findall(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC, every 0.2 s \(Ctrl-C to stop\)$", output, re.M)) >= 2
    assert "Traceback" not in proc.stderr.read().decode()
