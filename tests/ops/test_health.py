"""``billingworker health``: exit 0 only if the database and broker answer, a worker consumes the
queues and the run is on time."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from types import SimpleNamespace

import pika
import pytest

from billingworker.ops.consumers import CONSUMERS_KEY, ConsumerPresence

from .conftest import NOW, REDIS_URL, add_run, cli, message


@pytest.fixture
def worker_seen(redis_client, redis_broker) -> Iterator[ConsumerPresence]:
    """A worker process's presence as the worker middleware records it at boot (its beat thread
    runs too); removed at shutdown."""
    presence = ConsumerPresence(redis_client, interval=3600)
    presence.after_worker_boot(redis_broker, SimpleNamespace(consumer_whitelist={"billing", "emails"}))
    yield presence
    presence.before_worker_shutdown(redis_broker, None)


def test_no_daily_run_is_unhealthy(redis_client, engine):
    result = cli(engine, "health")

    assert result.exit_code == 1
    assert "ok    database:" in result.output and "ok    broker:" in result.output
    assert "FAIL  daily_run: no daily run has ever run" in result.output


def test_a_recent_succeeded_run_is_healthy(redis_client, worker_seen, engine):
    add_run(engine, status="succeeded", finished_hours_ago=2)

    result = cli(engine, "health")

    assert result.exit_code == 0, result.output
    assert "ok    daily_run: #1 of" in result.output


def test_a_run_too_long_ago_is_unhealthy(redis_client, worker_seen, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=30)

    result = cli(pg_engine, "health")
    relaxed = cli(pg_engine, "health", "--max-age-hours", "48")

    assert result.exit_code == 1
    assert "finished 30.0 h ago (limit 26 h)" in result.output
    assert relaxed.exit_code == 0, relaxed.output


def test_a_failed_last_run_is_unhealthy_even_after_an_earlier_success(redis_client, worker_seen, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=3, run_date=(NOW - timedelta(days=1)).date())
    add_run(pg_engine, status="failed", finished_hours_ago=1)

    result = cli(pg_engine, "health", "--json")

    assert result.exit_code == 1
    report = json.loads(result.output)
    assert report["ok"] is False
    assert report["checks"][3] == {"name": "daily_run", "ok": False,
                                   "detail": f"the last daily run (#2 of {NOW.date()}) failed"}


def test_a_running_run_is_fine_while_the_previous_success_is_recent(redis_client, worker_seen, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=20, run_date=(NOW - timedelta(days=1)).date())
    add_run(pg_engine, status="running", finished_hours_ago=None)

    result = cli(pg_engine, "health")

    assert result.exit_code == 0, result.output
    assert "#2 of" in result.output and "is running" in result.output


def test_dry_runs_do_not_count(redis_client, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=1, dry_run=True)

    assert cli(pg_engine, "health").exit_code == 1


def test_no_run_check_skips_the_daily_run(redis_client, worker_seen, engine):
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

    assert result.exit_code == 1
    assert "ok    broker: amqp://guest:***@127.0.0.1:5672/%2F answers" in result.output
    # no queue has a consumer in this virtual host
    assert "FAIL  workers: no consumer on the queues" in result.output


# --- consuming workers --------------------------------------------------------------------------

def test_zero_consuming_workers_is_unhealthy_even_after_enqueues(redis_broker, redis_client, engine):
    # Given: a good daily run, and processes that only enqueue (Dramatiq's heartbeat records them)
    add_run(engine, status="succeeded", finished_hours_ago=1)
    redis_broker.enqueue(message("relay_outbox", "emails"))
    assert redis_client.zcard("dramatiq:__heartbeats__") == 1

    # When
    result = cli(engine, "health")

    # Then
    assert result.exit_code == 1, result.output
    assert ("FAIL  workers: no consuming worker seen in the last 120 s (none recorded: start `dramatiq "
            "billingworker.worker`)") in result.output
    assert "ok    daily_run:" in result.output


def test_a_worker_seen_recently_is_healthy(redis_client, worker_seen, engine):
    add_run(engine, status="succeeded", finished_hours_ago=1)

    result = cli(engine, "health", "--json")

    assert result.exit_code == 0, result.output
    check = json.loads(result.output)["checks"][2]
    assert check["name"] == "workers" and check["ok"] is True
    assert check["detail"].startswith(f"1 consuming worker(s) seen in the last 120 s ({worker_seen.info['host']} pid ")


def test_a_worker_silent_longer_than_the_limit_is_unhealthy(redis_client, worker_seen, pg_engine, monkeypatch):
    add_run(pg_engine, status="succeeded", finished_hours_ago=1)
    # the worker was last seen 5 minutes ago (killed: no shutdown removed its record)
    redis_client.zadd(CONSUMERS_KEY, {worker_seen.consumer_id: int(time.time() * 1000) - 300_000})

    silent = cli(pg_engine, "health")
    relaxed = cli(pg_engine, "health", "--max-worker-silence", "600")
    monkeypatch.setenv("HEALTH_MAX_WORKER_SILENCE", "900")
    from_env = cli(pg_engine, "health")  # the runner keeps the environment it runs in

    assert silent.exit_code == 1
    assert "FAIL  workers: no consuming worker seen in the last 120 s (the last one, " in silent.output
    assert "s ago)" in silent.output and f"pid {worker_seen.info['pid']}" in silent.output
    assert relaxed.exit_code == 0, relaxed.output
    assert from_env.exit_code == 0 and "seen in the last 900 s" in from_env.output


def test_a_worker_of_one_queue_leaves_the_other_unconsumed_and_unhealthy(redis_client, redis_broker, engine):
    # Given a good run and a worker started with `--queues emails` only
    add_run(engine, status="succeeded", finished_hours_ago=1)
    presence = ConsumerPresence(redis_client, interval=3600)
    presence.after_worker_boot(redis_broker, SimpleNamespace(consumer_whitelist={"emails"}))
    try:
        # When
        result = cli(engine, "health")
        metrics = cli(engine, "metrics", "--once")
    finally:
        presence.before_worker_shutdown(redis_broker, None)

    # Then health names the queue nobody consumes; the metrics say it per queue
    assert result.exit_code == 1, result.output
    assert ("FAIL  workers: no consuming worker of the billing queue(s) seen in the last 120 s (1 consume only the "
            f"others: {presence.info['host']} pid {presence.info['pid']})") in result.output
    assert 'billingworker_queue_consumers{queue="billing"} 0.0' in metrics.output
    assert 'billingworker_queue_consumers{queue="emails"} 1.0' in metrics.output


def test_no_worker_check_skips_the_workers(redis_client, pg_engine):
    add_run(pg_engine, status="succeeded", finished_hours_ago=1)

    result = cli(pg_engine, "health", "--no-worker-check")

    assert result.exit_code == 0, result.output
    assert "workers" not in result.output


def test_on_rabbitmq_a_consumer_on_the_queues_is_a_live_worker(pg_engine):
    # Given: a virtual host of the test's own whose billing queue has one consumer
    vhost = f"billingworker-health-{os.getpid()}-{time.monotonic_ns()}"
    subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                   capture_output=True, timeout=60)
    url = f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.queue_declare("billing", durable=True)
        channel.queue_declare("emails", durable=True)
        idle = cli(pg_engine, "health", "--no-run-check", broker_url=url)
        channel.basic_consume("billing", lambda *_: None)
        billing_only = cli(pg_engine, "health", "--no-run-check", broker_url=url)
        channel.basic_consume("emails", lambda *_: None)

        # When
        consumed = cli(pg_engine, "health", "--no-run-check", broker_url=url)
    finally:
        connection.close()
        subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)

    # Then
    assert idle.exit_code == 1 and "FAIL  workers: no consumer on the queues" in idle.output
    assert billing_only.exit_code == 1
    assert "FAIL  workers: no consumer on the emails queue(s) (1 on the others)" in billing_only.output
    assert consumed.exit_code == 0, consumed.output
    assert "ok    workers: 1 consumer(s) on the queues" in consumed.output
