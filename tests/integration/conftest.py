"""Real Redis, real PostgreSQL, real ``dramatiq`` worker processes.

Each test gets a migrated, empty PostgreSQL database (``pg_engine``), an empty Redis database
(``TEST_REDIS_URL``, default db 0 of a redis-server the test run starts for itself) and as many
workers as it starts with ``start_worker``:
``dramatiq billingworker.worker`` subprocesses, configured only through the environment, as
in production. The test process talks to Redis through its own ``RedisBroker``; it never
touches the global (stub) broker of the in-process tests.

Redis must answer: a missing server fails the run (CI must never pass by skipping). Waiting is
always a poll with a deadline; a worker's stderr is attached to the report of a failing test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker
from sqlalchemy import Engine, text

from tests.redis_server import run_redis_url

# A Redis server of this test run's own (tests/redis_server.py): two runs never flush each other.
REDIS_URL = os.environ.get("TEST_REDIS_URL") or run_redis_url(0)
#: Dramatiq's default key prefix in Redis (``RedisBroker(namespace=...)``).
NAMESPACE = "dramatiq"
QUEUES = ("billing", "emails")
#: Seconds a test waits for the worker to reach the state it expects.
DEADLINE = 30.0
#: Seconds a worker may take to boot, and to stop after SIGTERM before it is killed.
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0
#: Seconds between two polls.
POLL_INTERVAL = 0.1
READY_LINE = "Worker process is ready for action."

_WORKERS = pytest.StashKey[list["WorkerProcess"]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """Attach every worker's stderr to the report of a failing test (setup, call or teardown)."""
    report = yield
    if report.failed:
        for worker in item.stash.get(_WORKERS, []):
            report.sections.append((f"dramatiq worker {worker.name} (pid {worker.pid}) stderr", worker.log()))
    return report


# --- waiting -----------------------------------------------------------------------------------

def wait_for(check: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(POLL_INTERVAL)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last check returned {last!r})")


def pending_messages(client: redis.Redis) -> dict[str, int]:
    """Messages not yet acknowledged, per queue and delay queue, read in one atomic snapshot.

    A message stays in ``<ns>:<queue>.msgs`` from enqueue until the worker acks or dead-letters
    it, and a retry is written to the delay queue before the failed attempt is acked; a job
    enqueues its follow-up messages before it is acked. So all zero means: nothing left to do.
    """
    keys = [f"{NAMESPACE}:{q}{suffix}.msgs" for q in QUEUES for suffix in ("", ".DQ")]
    pipe = client.pipeline(transaction=True)
    for key in keys:
        pipe.hlen(key)
    return dict(zip(keys, pipe.execute(), strict=True))


def wait_until_idle(client: redis.Redis, timeout: float = DEADLINE) -> None:
    """Wait until every message (and everything it enqueued) was processed."""
    wait_for(lambda: not any(pending_messages(client).values()), "the worker to process every message", timeout)


def dead_letters(client: redis.Redis, queue: str = "billing") -> list[dict]:
    """The dead-lettered messages of ``queue`` (``<ns>:<queue>.XQ``), oldest first, as JSON."""
    ids = client.zrange(f"{NAMESPACE}:{queue}.XQ", 0, -1)
    return [json.loads(client.hget(f"{NAMESPACE}:{queue}.XQ.msgs", i)) for i in ids]


def eml_files(mail_dir: Path) -> list[Path]:
    return sorted(mail_dir.glob("*.eml")) if mail_dir.is_dir() else []


def scalar(engine: Engine, sql: str, **params: Any) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params).scalar()


def rows(engine: Engine, sql: str, **params: Any) -> list:
    with engine.connect() as conn:
        return list(conn.execute(text(sql), params))


def message(actor_name: str, queue_name: str = "billing", **kwargs: Any) -> Message:
    return Message(queue_name=queue_name, actor_name=actor_name, args=(), kwargs=kwargs, options={})


# --- services ----------------------------------------------------------------------------------

@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    """The test Redis database, empty before and after the test."""
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3, socket_timeout=10)
    error: redis.RedisError | None = None
    try:
        client.ping()
    except redis.RedisError as exc:
        error = exc
    if error is not None:  # failed outside the except block: one clear line, no chained traceback
        client.close()
        pytest.fail(f"Redis at {REDIS_URL} does not answer ({error}). The integration tests need it: start it "
                    "(e.g. `redis-server --daemonize yes`) or point TEST_REDIS_URL at one.", pytrace=False)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def broker(redis_client) -> Iterator[RedisBroker]:
    """A sending-side broker of its own (the global broker of the test process stays stub://)."""
    sender = RedisBroker(url=REDIS_URL)
    yield sender
    sender.close()
    sender.client.close()


@pytest.fixture
def mail_dir(tmp_path) -> Path:
    return tmp_path / "mail"


# --- workers -----------------------------------------------------------------------------------

def dramatiq_command() -> list[str]:
    script = Path(sys.executable).parent / "dramatiq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dramatiq"]


@dataclass
class WorkerProcess:
    name: str
    proc: subprocess.Popen
    log_path: Path
    processes: int
    _log_file: Any = field(repr=False, default=None)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def jobs_done(self, actor: str) -> int:
        """How many messages of ``actor`` this worker finished (from billingworker.jobs' log line)."""
        return self.log().count(f"job {actor} message ")

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                pytest.fail(f"dramatiq worker {self.name} exited with {self.proc.returncode} while booting:\n"
                            f"{self.log()}", pytrace=False)
            return self.log().count(READY_LINE) >= self.processes

        wait_for(ready, f"dramatiq worker {self.name} to boot {self.processes} process(es)", READY_TIMEOUT)

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self) -> None:
        """Wait for the SIGTERM'd worker; kill its process group if it does not stop in time."""
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            # The worker runs in a process group of its own (start_new_session): this kills its
            # master and the worker processes it forked, nothing else.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        if self._log_file is not None:
            self._log_file.close()


@pytest.fixture
def start_worker(request, pg_url, pg_engine, redis_client, mail_dir,
                 tmp_path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start ``dramatiq billingworker.worker`` (``processes`` x 4 threads) on both queues; waits
    until it is ready. Every worker started is stopped with SIGTERM at teardown."""
    workers: list[WorkerProcess] = []
    request.node.stash[_WORKERS] = workers

    def start(processes: int = 1, threads: int = 4, env: dict[str, str] | None = None) -> WorkerProcess:
        name = f"w{len(workers) + 1}"
        log_path = tmp_path / f"worker-{name}.log"
        log_file = log_path.open("wb")
        worker_env = {
            **os.environ,
            "DATABASE_URL": pg_url,
            "BROKER_URL": REDIS_URL,
            "MAIL_URL": f"file://{mail_dir}",
            "MAIL_FROM": "Billing <billing@example.com>",
            "BILLING_TIME_ZONE": "UTC",
            "FAN_OUT_BATCH_SIZE": "3",
            # An idle consumer polls Redis at most this many ms apart (default 1000): quicker tests.
            "dramatiq_worker_timeout": "100",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        proc = subprocess.Popen(
            [*dramatiq_command(), "billingworker.worker", "--processes", str(processes), "--threads", str(threads),
             "--queues", *QUEUES],
            cwd=tmp_path, env=worker_env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        worker = WorkerProcess(name, proc, log_path, processes, log_file)
        workers.append(worker)
        worker.wait_ready()
        return worker

    yield start
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait_stopped()


@pytest.fixture
def worker(start_worker) -> WorkerProcess:
    """One worker: one process, four threads, queues billing and emails."""
    return start_worker()


# --- a real SMTP server -----------------------------------------------------------------------

class SmtpSink:
    """An aiosmtpd handler that counts what it received per Message-ID (the receiver's view)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.received: list[str] = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        import asyncio
        from email import message_from_bytes

        if self.delay:
            await asyncio.sleep(self.delay)
        self.received.append(str(message_from_bytes(envelope.content)["Message-ID"]))
        return "250 OK"

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for message_id in list(self.received):
            out[message_id] = out.get(message_id, 0) + 1
        return out

    def duplicates(self) -> int:
        """Messages received more than once, counted once per extra copy."""
        return sum(n - 1 for n in self.counts().values())


@pytest.fixture
def smtp_sink() -> Iterator[tuple[SmtpSink, str]]:
    """A real SMTP server (aiosmtpd) on a free loopback port; yields (sink, MAIL_URL for workers)."""
    from aiosmtpd.controller import Controller

    from tests.redis_server import free_port

    sink = SmtpSink()
    port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield sink, f"smtp://127.0.0.1:{port}"
    finally:
        controller.stop()


# --- RabbitMQ ----------------------------------------------------------------------------------

RABBITMQ_ADMIN = os.environ.get("TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672")


@pytest.fixture
def rabbitmq_url() -> Iterator[str]:
    """A RabbitMQ virtual host of the test's own (``rabbitmqctl``), deleted afterwards: two runs
    on one machine never share a queue."""
    vhost = f"billingworker-test-{os.getpid()}-{time.monotonic_ns()}"
    try:
        subprocess.run(["rabbitmqctl", "add_vhost", vhost], check=True, capture_output=True, timeout=60)
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"], check=True,
                       capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"RabbitMQ does not answer to rabbitmqctl ({exc}): start it (rabbitmq-server -detached)",
                    pytrace=False)
    yield f"{RABBITMQ_ADMIN}/{vhost}"
    subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True, timeout=60)


# --- the scheduler -----------------------------------------------------------------------------

def start_scheduler(tmp_path: Path, env: dict[str, str]) -> subprocess.Popen:
    """``billingworker scheduler`` with short intervals (a stalled run resumed after 8 s, the outbox
    relayed every 3 s), configured through ``env`` on top of this process's environment; the
    caller terminates it. Its output is in ``tmp_path / "scheduler.log"``."""
    script = Path(sys.executable).parent / "billingworker"
    log = (tmp_path / "scheduler.log").open("wb")
    return subprocess.Popen(
        [str(script), "scheduler", "--tick", "1", "--stall-seconds", "8", "--relay-every", "3", "--relay-after", "8"],
        cwd=tmp_path, env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True)


def run_state(engine: Engine) -> dict:
    """What the daily run, the outbox and the failures look like (for the report of a failing test)."""
    try:
        return {"tasks": rows(engine, "SELECT task, status, batches_done, batches_total FROM daily_run_tasks"
                                      " ORDER BY position"),
                "run": rows(engine, "SELECT status, started_at FROM daily_runs"),
                "outbox": rows(engine, "SELECT status, count(*) FROM email_outbox GROUP BY status"),
                "failures": rows(engine, "SELECT actor, error, reason FROM job_failures")[:5]}
    except Exception as exc:  # noqa: BLE001 - only for the report (the database may be down)
        return {"unreadable": repr(exc)}

