"""Prometheus: the collector reads the broker and the database at scrape time."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
from prometheus_client import generate_latest

from billingworker.ops.metrics import OpsCollector, make_registry, prometheus_port, worker_metrics

from .conftest import NOW, REDIS_URL, add_parked_client, add_run, cli, kill, message


def test_the_collector_yields_gauges_with_the_state_of_the_moment(redis_broker, engine):
    # Given
    kill(redis_broker, message())
    redis_broker.enqueue(message(age_s=90))
    redis_broker.enqueue(message("deliver_email", "emails"), delay=60_000)
    run_id = add_run(engine, status="succeeded", finished_hours_ago=1, failures=2, invoices=7, now=NOW)
    add_parked_client(engine)
    now = time.time()
    registry = make_registry(OpsCollector(REDIS_URL, engine=engine, clock=lambda: now))

    # When
    value = registry.get_sample_value

    # Then
    assert value("billingworker_queue_messages", {"queue": "billing", "state": "waiting"}) == 1
    assert value("billingworker_queue_messages", {"queue": "billing", "state": "in_progress"}) == 0
    assert value("billingworker_queue_messages", {"queue": "emails", "state": "delayed"}) == 1
    assert value("billingworker_dead_letters", {"queue": "billing"}) == 1
    assert value("billingworker_dead_letters", {"queue": "emails"}) == 0
    assert 89 <= value("billingworker_queue_oldest_message_age_seconds", {"queue": "billing"}) < 120
    assert value("billingworker_queue_oldest_message_age_seconds", {"queue": "emails"}) == 0
    assert value("billingworker_live_workers") == 1
    assert value("billingworker_daily_run_last_status", {"status": "succeeded"}) == 1
    assert value("billingworker_daily_run_last_status", {"status": "failed"}) == 0
    assert value("billingworker_daily_run_last_count", {"task": "generate", "count": "invoices_created"}) == 7
    assert value("billingworker_daily_run_last_count", {"task": "generate", "count": "clients"}) == 40
    assert value("billingworker_daily_run_last_failures") == 2
    finished = (NOW - timedelta(hours=1)).timestamp()
    assert value("billingworker_daily_run_last_success_timestamp_seconds") == pytest.approx(finished, abs=1e-3)
    assert value("billingworker_parked_clients") == 1
    assert value("billingworker_ops_source_up", {"source": "broker"}) == 1
    assert value("billingworker_ops_source_up", {"source": "database"}) == 1
    assert run_id == 1


def test_the_state_is_read_again_at_each_scrape(redis_broker, pg_engine):
    registry = make_registry(OpsCollector(REDIS_URL, engine=pg_engine))
    assert registry.get_sample_value("billingworker_queue_messages", {"queue": "billing", "state": "waiting"}) == 0
    assert registry.get_sample_value("billingworker_daily_run_last_success_timestamp_seconds") == 0

    redis_broker.enqueue(message())
    add_run(pg_engine, status="failed")

    assert registry.get_sample_value("billingworker_queue_messages", {"queue": "billing", "state": "waiting"}) == 1
    assert registry.get_sample_value("billingworker_daily_run_last_status", {"status": "failed"}) == 1


def test_a_source_that_does_not_answer_is_a_gauge_not_a_failed_scrape(pg_engine):
    registry = make_registry(OpsCollector("redis://127.0.0.1:1/0", engine=pg_engine))

    text = generate_latest(registry).decode()

    assert 'billingworker_ops_source_up{source="broker"} 0.0' in text
    assert 'billingworker_ops_source_up{source="database"} 1.0' in text
    assert "billingworker_queue_messages{" not in text


def test_metrics_once_prints_the_exposition(redis_broker, pg_engine):
    redis_broker.enqueue(message())

    result = cli(pg_engine, "metrics", "--once")

    assert result.exit_code == 0, result.output
    assert 'billingworker_queue_messages{queue="billing",state="waiting"} 1.0' in result.output
    assert "# TYPE billingworker_dead_letters gauge" in result.output


def test_worker_metrics_are_off_unless_prometheus_port_is_set(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_PORT", raising=False)
    assert prometheus_port() is None and worker_metrics() is None

    monkeypatch.setenv("PROMETHEUS_PORT", "9191")
    middleware = worker_metrics()

    assert prometheus_port() == 9191
    assert [f.__name__ for f in middleware.forks] == ["serve_worker_metrics"]
    monkeypatch.setenv("PROMETHEUS_PORT", "http")
    with pytest.raises(ValueError, match="PROMETHEUS_PORT"):
        prometheus_port()
