"""Prometheus: the collector reads the broker and the database at scrape time."""

from __future__ import annotations

import time
from datetime import UTC, date, datetime, timedelta
from types import SimpleNamespace

import pytest
from prometheus_client import generate_latest

from billingworker.db import unit_of_work
from billingworker.domain.models import DailyRun, Setting
from billingworker.ops.consumers import ConsumerPresence
from billingworker.ops.metrics import OpsCollector, make_registry, prometheus_port, worker_metrics

from .conftest import NOW, REDIS_URL, add_parked_client, add_run, cli, kill, message


def test_the_collector_yields_gauges_with_the_state_of_the_moment(redis_client, redis_broker, engine):
    # Given
    kill(redis_broker, message())
    redis_broker.enqueue(message(age_s=90))
    redis_broker.enqueue(message("deliver_email", "emails"), delay=60_000)
    run_id = add_run(engine, status="succeeded", finished_hours_ago=1, failures=2, invoices=7, now=NOW)
    add_parked_client(engine)
    # one worker process consumes (the broker above only enqueued: it is no worker)
    presence = ConsumerPresence(redis_client)
    presence.after_worker_boot(redis_broker, SimpleNamespace(consumer_whitelist={"billing", "emails"}))
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
    presence.before_worker_shutdown(redis_broker, None)
    assert value("billingworker_live_workers") == 0


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


# --- the daily run that should exist by now (alert DailyRunNotSucceeded) -------------------------

def _schedule_registry(engine, now: datetime, time_zone: str = "Europe/London"):
    return make_registry(OpsCollector("redis://127.0.0.1:1/0", engine=engine, clock=now.timestamp,
                                      time_zone=time_zone))


def test_the_due_run_is_yesterdays_until_todays_time_comes_in_the_installation_zone(engine):
    # Given a run of 9 July succeeded; daily_run_time 09:00 (the default) in London (BST, UTC+1)
    add_run(engine, status="succeeded", run_date=date(2026, 7, 9), now=datetime(2026, 7, 9, 9, 0, tzinfo=UTC))
    before = _schedule_registry(engine, datetime(2026, 7, 10, 7, 59, tzinfo=UTC))  # 08:59 in London
    after = _schedule_registry(engine, datetime(2026, 7, 10, 8, 0, tzinfo=UTC))  # 09:00 in London

    # Then before 09:00 local the due run is 9 July's, done; from 09:00 it is 10 July's, not done
    due = datetime(2026, 7, 9, 8, 0, tzinfo=UTC).timestamp()
    assert before.get_sample_value("billingworker_daily_run_due_timestamp_seconds") == due
    assert before.get_sample_value("billingworker_daily_run_due_succeeded") == 1
    assert after.get_sample_value("billingworker_daily_run_due_timestamp_seconds") == due + 24 * 3600
    assert after.get_sample_value("billingworker_daily_run_due_succeeded") == 0
    assert after.get_sample_value("billingworker_ops_source_up", {"source": "schedule"}) == 1


def test_the_due_run_follows_the_setting_and_counts_only_real_successes(engine):
    # Given daily_run_time 06:30; today's run (started by hand at 05:55) failed, a dry run succeeded
    with unit_of_work(engine) as session:
        session.add(Setting(name="daily_run_time", value='"06:30"'))
        session.commit()
    today = date(2026, 1, 15)
    run_id = add_run(engine, status="failed", run_date=today, now=datetime(2026, 1, 15, 6, 0, tzinfo=UTC))
    add_run(engine, status="succeeded", run_date=today, dry_run=True, now=datetime(2026, 1, 15, 6, 0, tzinfo=UTC))
    registry = _schedule_registry(engine, datetime(2026, 1, 15, 12, 0, tzinfo=UTC))

    assert registry.get_sample_value("billingworker_daily_run_due_timestamp_seconds") == datetime(
        2026, 1, 15, 6, 30, tzinfo=UTC).timestamp()
    assert registry.get_sample_value("billingworker_daily_run_due_succeeded") == 0

    # When that run is resumed and succeeds (it ran before the scheduled time: the day counts)
    with unit_of_work(engine) as session:
        session.get(DailyRun, run_id).status = "succeeded"
        session.commit()

    assert registry.get_sample_value("billingworker_daily_run_due_succeeded") == 1


def test_a_daily_run_time_that_does_not_parse_is_a_source_down_not_a_failed_scrape(engine):
    with unit_of_work(engine) as session:
        session.add(Setting(name="daily_run_time", value='"25:99"'))
        session.commit()
    add_parked_client(engine)

    text = generate_latest(_schedule_registry(engine, NOW)).decode()

    assert 'billingworker_ops_source_up{source="schedule"} 0.0' in text
    assert 'billingworker_ops_source_up{source="database"} 1.0' in text
    assert "billingworker_parked_clients 1.0" in text
    assert "billingworker_daily_run_due_timestamp_seconds" not in text
