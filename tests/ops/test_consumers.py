"""Consuming workers (``ops.consumers``): only a worker process records itself, with its counts;
``health`` and ``status`` count those, never a process that only enqueues."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from dramatiq import Message

from billingworker.ops.consumers import (
    CONSUMER_INFO_KEY,
    CONSUMERS_KEY,
    THROUGHPUT_KEY,
    ConsumerPresence,
    read_consumers,
    throughput_totals,
)

from .conftest import REDIS_URL, add_run, cli, db_url

#: Seconds a worker may take to boot or stop, and a condition to come true.
DEADLINE = 30.0
READY_LINE = "Worker process is ready for action."


def wait_for(check: Callable[[], object], what: str) -> object:
    deadline = time.monotonic() + DEADLINE
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def test_a_booted_worker_records_itself_and_its_counts_and_removes_itself_at_shutdown(redis_client, redis_broker):
    # Given: the middleware of a worker consuming billing only
    presence = ConsumerPresence(redis_client, interval=3600)
    presence.after_worker_boot(redis_broker, SimpleNamespace(consumer_whitelist={"billing"}))

    # Then it is recorded at once, with its host, pid and queues
    [consumer] = read_consumers(redis_client)
    assert consumer.id == presence.consumer_id and consumer.pid == os.getpid()
    assert consumer.queues == ["billing"] and consumer.last_seen_seconds_ago < DEADLINE

    # When it processes three messages (one failed), one of them a retry moved from the delay queue
    ok = Message(queue_name="billing", actor_name="apply_payment", args=(), kwargs={}, options={})
    for msg, exc in ((ok, None), (ok.copy(queue_name="billing.DQ"), None), (ok, RuntimeError("db down"))):
        presence.after_process_message(redis_broker, msg, exception=exc)
    assert throughput_totals(redis_client) == {}  # counted in memory until the next record
    presence.record()

    # Then the totals are in Redis, per queue
    assert throughput_totals(redis_client) == {"billing": {"processed": 2, "failed": 1}}

    # When it shuts down cleanly: gone from the consumers, the totals stay
    presence.after_process_message(redis_broker, ok)
    presence.before_worker_shutdown(redis_broker, None)
    assert read_consumers(redis_client) == [] and not redis_client.hkeys(CONSUMER_INFO_KEY)
    assert throughput_totals(redis_client) == {"billing": {"processed": 3, "failed": 1}}


def test_status_lists_consuming_workers_not_enqueuers(redis_client, redis_broker, pg_engine):
    # Given: a consumer seen now, one killed 10 minutes ago, and a process that only enqueued
    presence = ConsumerPresence(redis_client, interval=3600)
    presence.after_worker_boot(redis_broker, SimpleNamespace(consumer_whitelist=None))
    redis_client.zadd(CONSUMERS_KEY, {"old-host:42:abc": int(time.time() * 1000) - 600_000})
    redis_client.hset(CONSUMER_INFO_KEY, "old-host:42:abc", json.dumps({"host": "old-host", "pid": 42,
                                                                        "queues": ["emails"], "started_ms": 1}))
    redis_broker.enqueue(Message(queue_name="billing", actor_name="relay_outbox", args=(), kwargs={}, options={}))

    # When
    as_json = cli(pg_engine, "status", "--json")
    screen = cli(pg_engine, "status")

    # Then: one live worker; both consumers listed, the gone one with its age
    assert as_json.exit_code == 0, as_json.output
    broker = json.loads(as_json.output)["broker"]
    assert broker["workers"] == 1
    assert [(c["host"], c["pid"], c["queues"]) for c in broker["consumers"]] == [
        (presence.info["host"], os.getpid(), ["billing", "emails"]), ("old-host", 42, ["emails"])]
    lines = screen.output.splitlines()
    assert lines[0].endswith("live workers 1")
    assert "Consuming workers" in screen.output
    old = next(line for line in lines if line.startswith("old-host"))
    assert old.split()[1:] == ["42", "emails", "10m", "ago"]
    presence.before_worker_shutdown(redis_broker, None)


# --- a real worker process ----------------------------------------------------------------------

def _script(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    return [str(script)] if script.exists() else [sys.executable, "-m", name]


@pytest.fixture
def worker_env(pg_engine, tmp_path) -> dict[str, str]:
    return {**os.environ, "DATABASE_URL": db_url(pg_engine), "BROKER_URL": REDIS_URL,
            "MAIL_URL": f"file://{tmp_path / 'mail'}", "dramatiq_worker_timeout": "100", "PYTHONUNBUFFERED": "1",
            "LOG_FORMAT": "text"}


@pytest.fixture
def dramatiq_worker(worker_env, tmp_path) -> Iterator[Callable[[], subprocess.Popen]]:
    """Start ``dramatiq billingworker.worker`` (1 process, 2 threads) on demand; stopped at teardown."""
    started: list[tuple[subprocess.Popen, Path]] = []

    def start() -> subprocess.Popen:
        log_path = tmp_path / "worker.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen([*_script("dramatiq"), "billingworker.worker", "--processes", "1", "--threads",
                                     "2", "--queues", "billing", "emails"], cwd=tmp_path, env=worker_env,
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        started.append((proc, log_path))
        wait_for(lambda: proc.poll() is None and READY_LINE in log_path.read_text(errors="replace"),
                 "the dramatiq worker to boot")
        return proc

    yield start
    for proc, _ in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_health_fails_without_a_worker_passes_with_one_and_enqueue_never_counts(
        redis_client, pg_engine, worker_env, dramatiq_worker):
    add_run(pg_engine, status="succeeded", finished_hours_ago=1)

    # Given: no worker, and an operator's `billingworker enqueue` (a process of its own, talking
    # through Dramatiq's dispatch script, which writes a heartbeat)
    enqueued = subprocess.run([*_script("billingworker"), "enqueue", "relay_outbox"], env=worker_env,
                              capture_output=True, text=True, timeout=DEADLINE)
    assert enqueued.returncode == 0, enqueued.stderr
    assert redis_client.zcard("dramatiq:__heartbeats__") == 1

    # Then health fails, naming the missing worker
    before = cli(pg_engine, "health")
    assert before.exit_code == 1
    assert "FAIL  workers: no consuming worker seen in the last 120 s (none recorded" in before.output

    # When a real worker starts, it consumes the message and records itself
    proc = dramatiq_worker()

    # Then health passes, naming its pid, and the message it processed is counted
    after = wait_for(lambda: (r := cli(pg_engine, "health")).exit_code == 0 and r, "health to pass")
    assert "ok    workers: 1 consuming worker(s)" in after.output
    # the worker is a master process and the worker process it forked: the consumer is the child
    [consumer] = read_consumers(redis_client)
    assert consumer.pid != proc.pid and consumer.queues == ["billing", "emails"]
    wait_for(lambda: redis_client.hlen("dramatiq:emails.msgs") == 0, "the worker to process relay_outbox")

    # When it stops cleanly, it is no consumer any more: health fails again
    proc.send_signal(signal.SIGTERM)
    proc.wait(DEADLINE)
    assert read_consumers(redis_client) == []
    assert throughput_totals(redis_client)["emails"]["processed"] >= 1  # flushed at shutdown
    assert cli(pg_engine, "health").exit_code == 1
    assert redis_client.hget(THROUGHPUT_KEY, "emails:failed") in (None, b"0")
