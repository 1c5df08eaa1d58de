"""``billingworker health``: exit 0 only if the database and broker answer and the run is on time."""

from __future__ import annotations

import json
from datetime import timedelta

from .conftest import NOW, REDIS_URL, add_run, cli


def test_no_daily_run_is_unhealthy(redis_client, engine):
    result = cli(engine, "health")

    assert result.exit_code == 1
    assert "ok    database:" in result.output and "ok    broker:" in result.output
    assert "FAIL  daily_run: no daily run has ever run" in result.output


def test_a_recent_succeeded_run_is_healthy(redis_client, engine):
    add_run(engine, status="succeeded", finished_hours_ago=2)

    result = cli(engine, "health")

    assert result.exit_code == 0, result.output
    assert "ok    daily_run: #1 of" in result.output


def test_a_run_too_long_ago_is_unhealthy(redis_client, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=30)

    result = cli(pg_engine, "health")
    relaxed = cli(pg_engine, "health", "--max-age-hours", "48")

    assert result.exit_code == 1
    assert "finished 30.0 h ago (limit 26 h)" in result.output
    assert relaxed.exit_code == 0, relaxed.output


def test_a_failed_last_run_is_unhealthy_even_after_an_earlier_success(redis_client, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=3, run_date=(NOW - timedelta(days=1)).date())
    add_run(pg_engine, status="failed", finished_hours_ago=1)

    result = cli(pg_engine, "health", "--json")

    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert report["checks"][2] == {"name": "daily_run", "ok": False,
                                   "detail": f"the last daily run (#2 of {NOW.date()}) failed"}


def test_a_running_run_is_fine_while_the_previous_success_is_recent(redis_client, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=20, run_date=(NOW - timedelta(days=1)).date())
    add_run(pg_engine, status="running", finished_hours_ago=None)

    result = cli(pg_engine, "health")

    assert result.exit_code == 0, result.output
    assert "#2 of" in result.output and "is running" in result.output


def test_dry_runs_do_not_count(redis_client, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=1, dry_run=True)

    assert cli(pg_engine, "health").exit_code == 1


def test_no_run_check_skips_the_daily_run(redis_client, engine):
    result = cli(engine, "health", "--no-run-check")

    assert result.exit_code == 0, result.output
    assert "daily_run" not in result.output


def test_a_wrong_database_url_is_unhealthy(redis_client):
    result = cli(None, "health", database_url="postgresql://postgres:hunter2@127.0.0.1:1/nothing_here")

    assert result.exit_code == 1
    assert "FAIL  database: postgresql://postgres:***@127.0.0.1:1/nothing_here does not answer" \
        in result.output
    assert "hunter2" not in result.output
    assert "FAIL  daily_run: not checked: the database does not answer" in result.output


def test_a_missing_database_is_unhealthy(redis_client, pg_url):
    missing = pg_url.rsplit("/", 1)[0] + "/billingworker_no_such_db"

    result = cli(None, "health", "--no-run-check", database_url=missing)

    assert result.exit_code == 1
    assert 'database "billingworker_no_such_db" does not exist' in result.output


def test_a_broker_that_does_not_answer_is_unhealthy(pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=1)

    result = cli(pg_engine, "health", broker_url="redis://127.0.0.1:1/0")

    assert result.exit_code == 1
    assert "FAIL  broker: redis://127.0.0.1:1/0 does not answer" in result.output
    assert f"{REDIS_URL}" not in result.output


def test_rabbitmq_broker_is_checked_by_connecting(pg_engine):
    result = cli(pg_engine, "health", "--no-run-check", broker_url="amqp://guest:guest@127.0.0.1:5672/%2F")

    assert result.exit_code == 0, result.output
    assert "ok    broker: amqp://guest:***@127.0.0.1:5672/%2F answers" in result.output
