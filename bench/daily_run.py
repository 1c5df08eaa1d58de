"""Benchmark: the whole daily run (SPEC §15) through real worker processes on Redis + PostgreSQL.

Recreates and seeds a PostgreSQL database (``bench.seed``, 50,000 clients and 200,000 services
by default), makes the day interesting for every task (late fees on, ~20 % of the clients
paying by stored card with auto capture, some of them declined, overdue invoices billed on
earlier days), starts ``--workers`` real ``dramatiq billingworker.worker`` processes on a
dedicated Redis database, enqueues ``run_daily_automation(as_of=...)`` and waits until the run
is finished AND both queues (``billing``, ``emails``) are empty. It prints the wall time per
task and overall, messages per second, CPU seconds per process group and the peak RSS of every
worker, then stops the workers and checks the books with SQL (nothing billed, fined, reminded
or charged twice; every email sent once).

Run from the repository root::

    .venv/bin/python -m bench.daily_run --clients 5000 --services 20000

Timings are printed, never asserted. The exit status is 1 when a correctness check fails or
the run does not finish before ``--deadline``.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402
from dramatiq import Message  # noqa: E402
from dramatiq.brokers.redis import RedisBroker  # noqa: E402
from sqlalchemy import Engine, select, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402

from billingworker.db import create_db_engine, normalise_url, session_factory  # noqa: E402

if TYPE_CHECKING:
    from bench.generate_due_invoices import Check

# bench.generate_due_invoices (and through it Alembic) is imported where it is used.

DEFAULT_URL = os.environ.get(
    "BENCH_DAILY_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/billingworker_bench_daily")
DEFAULT_REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
DEFAULT_AS_OF = "2026-01-15"
#: Dramatiq's key prefix in Redis (``RedisBroker(namespace=...)``).
NAMESPACE = "dramatiq"
QUEUES = ("billing", "emails")
READY_LINE = "Worker process is ready for action."
#: Seconds a worker may take to boot, and to stop after SIGTERM before it is killed.
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0
#: Seconds between two samples (RSS, queues, run state) while the run goes on.
SAMPLE_SECONDS = 0.5
#: Seconds between two progress lines.
PROGRESS_SECONDS = 5.0

#: Earlier days billed before the run, so that reminders, late fees and captures have old
#: invoices to work on: (days before as_of, client id % 4 residues). Half the clients were
#: billed 20 days ago (invoices 6 to 15 days overdue: late fees, first and second overdue
#: notices, a third one for the oldest), a quarter 3 days ago (a few days overdue, and some
#: due within the week: unpaid reminders). The last quarter has nothing billed before the day.
PRE_BILLS: tuple[tuple[int, tuple[int, ...]], ...] = ((20, (0, 1)), (3, (2,)))
#: Every CARD_EVERY-th client pays by stored card with auto capture (20 %); every
#: DECLINE_EVERY-th client's card is declined (the test gateway declines tokens ending 0002).
CARD_EVERY = 5
DECLINE_EVERY = 40
LATE_FEE_DAYS = 3

_JOB_LINE = re.compile(r"\bjob (\w+) message (\S+) (done in ([0-9.]+)s|refused|failed)")
_BATCH_TASK = re.compile(r"'task': '(\w+)'")
_ERROR_MARKS = ("[ERROR]", "[CRITICAL]", '"level": "ERROR"', '"level": "CRITICAL"')
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def say(message: str = "") -> None:
    print(message, flush=True)


def _row(label: str, value: str, note: str = "") -> None:
    say(f"  {label:<38} {value:>14}  {note}".rstrip())


# --------------------------------------------------------------------------- the seeded day

@dataclass
class SeedFigures:
    seed_seconds: float = 0.0
    setup_seconds: float = 0.0
    pre_bill_seconds: float = 0.0
    pre_bill_invoices: int = 0
    card_clients: int = 0
    declining_cards: int = 0
    unpaid_before: int = 0
    overdue_before: int = 0
    late_before: int = 0


def set_up_day(engine: Engine, *, late_fee: str) -> tuple[int, int]:
    """Late fees on, reminders at their defaults, ~20 % of the clients on auto capture with a
    default RemoteCreditCard at the test gateway (1 in 8 of those cards declines)."""
    from billingworker.domain.settings import save_settings

    with session_factory(engine)() as session:
        if late_fee == "fixed":
            save_settings(session, late_fee_days=LATE_FEE_DAYS, late_fee_type="fixed", late_fee_amount="5.00")
        else:
            save_settings(session, late_fee_days=LATE_FEE_DAYS, late_fee_type="percentage", late_fee_amount="10")
        session.commit()
    with engine.begin() as conn:
        conn.execute(text("UPDATE clients SET auto_cc_processing = true WHERE id % :n = 0"), {"n": CARD_EVERY})
        conn.execute(text("""
            INSERT INTO pay_methods (client_id, type, description, gateway_name, card_type, card_last_four,
                                     card_expiry, gateway_token, is_default)
            SELECT id, 'RemoteCreditCard', 'Visa ending ' || tail, 'testgateway', 'Visa', tail, '12/2030',
                   CASE tail WHEN '0002' THEN 'tok_4000000000000002' ELSE 'tok_4242424242424242' END, true
            FROM (SELECT id, CASE WHEN id % :d = 0 THEN '0002' ELSE '4242' END AS tail
                  FROM clients WHERE id % :n = 0) c"""), {"n": CARD_EVERY, "d": DECLINE_EVERY})
        cards, declining = conn.execute(text(
            "SELECT count(*), count(*) FILTER (WHERE card_last_four = '0002') FROM pay_methods")).one()
    return cards, declining


def pre_bill(engine: Engine, day: date, residues: tuple[int, ...], batch_size: int) -> int:
    """Bill the clients whose id % 4 is in ``residues`` as of ``day`` (an earlier daily run's
    generation, without its emails), through the domain code, one transaction per batch."""
    from billingworker.domain.billing.due_invoices import generate_for_clients

    with engine.connect() as conn:
        ids = list(conn.execute(text("SELECT id FROM clients WHERE id % 4 = ANY(:r) ORDER BY id"),
                                {"r": list(residues)}).scalars())
    new_session = session_factory(engine)
    invoices = 0
    for start in range(0, len(ids), batch_size):
        with new_session() as session:
            result = generate_for_clients(session, ids[start:start + batch_size], day, queue_email=False)
            session.commit()
        invoices += result.invoices_created
    return invoices


def prepare(url: str, *, clients: int, services: int, as_of: date, random_seed: int, late_fee: str,
            batch_size: int) -> SeedFigures:
    from bench.generate_due_invoices import prepare_database

    figures = SeedFigures()
    started = time.perf_counter()
    prepare_database(url, clients=clients, services=services, as_of=as_of, random_seed=random_seed, reuse=False)
    figures.seed_seconds = time.perf_counter() - started
    engine = create_db_engine(url)
    try:
        started = time.perf_counter()
        figures.card_clients, figures.declining_cards = set_up_day(engine, late_fee=late_fee)
        figures.setup_seconds = time.perf_counter() - started
        started = time.perf_counter()
        for days_before, residues in PRE_BILLS:
            day = as_of - timedelta(days=days_before)
            made = pre_bill(engine, day, residues, batch_size)
            figures.pre_bill_invoices += made
            say(f"  pre-billed {made:,} invoices as of {day} (clients with id % 4 in {residues})")
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.exec_driver_sql("ANALYZE")
        figures.pre_bill_seconds = time.perf_counter() - started
        with engine.connect() as conn:
            figures.unpaid_before, figures.overdue_before, figures.late_before = conn.execute(text("""
                SELECT count(*), count(*) FILTER (WHERE date_due < :d), count(*) FILTER (WHERE date_due <= :late)
                FROM invoices WHERE status = 'Unpaid'"""),
                {"d": as_of, "late": as_of - timedelta(days=LATE_FEE_DAYS)}).one()
    finally:
        engine.dispose()
    return figures


# --------------------------------------------------------------------------- /proc

def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after ``comm`` (index 0 is the state, 1 the parent)."""
    stat = _read(f"/proc/{pid}/stat")
    if stat is None:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants. /proc/<pid>/task/*/children is not on every kernel, so
    the parent links come from /proc/*/stat."""
    kids: dict[int, list[int]] = defaultdict(list)
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields is not None:
            kids[int(fields[1])].append(pid)
    if _read(f"/proc/{root}/stat") is None:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += kids.get(pid, [])
    return out


def status_kb(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (VmRSS, VmHWM), 0 if the process is gone."""
    status = _read(f"/proc/{pid}/status")
    if status:
        for line in status.splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def cpu_ticks(pid: int) -> int:
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0  # utime + stime


def server_ticks(database: str) -> dict[int, tuple[str, int]]:
    """CPU ticks of the PostgreSQL and Redis server processes, by pid, with their group:
    ``postgres (this db)`` for the backends serving ``database`` (their process title names
    it), ``postgres (other)`` for the rest of the cluster, ``redis-server``."""
    out = {}
    for pid in _all_pids():
        comm = (_read(f"/proc/{pid}/comm") or "").strip()
        if comm == "postgres":
            title = (_read(f"/proc/{pid}/cmdline") or "").replace("\0", " ")
            group = "postgres (this db)" if f" {database} " in title else "postgres (other)"
        elif comm == "redis-server":
            group = "redis-server"
        else:
            continue
        out[pid] = (group, cpu_ticks(pid))
    return out


@dataclass
class CpuSnapshot:
    """CPU ticks of everything the run involves, at one moment."""

    workers: dict[str, dict[int, int]]
    servers: dict[int, tuple[str, int]]
    machine: dict[str, int]
    bench: float

    @classmethod
    def take(cls, workers: list[WorkerProcess], database: str) -> CpuSnapshot:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls({w.name: {pid: cpu_ticks(pid) for pid in process_tree(w.pid)} for w in workers},
                   server_ticks(database), machine_ticks(), usage.ru_utime + usage.ru_stime)

    def seconds_since(self, earlier: CpuSnapshot) -> dict[str, float]:
        """CPU seconds by group between ``earlier`` and this snapshot; processes that started in
        between count from zero, processes that ended in between are lost."""
        out: dict[str, float] = {}
        for name, pids in self.workers.items():
            before = earlier.workers.get(name, {})
            out[name] = sum(t - before.get(pid, 0) for pid, t in pids.items()) / _CLK_TCK
        for pid, (group, ticks) in self.servers.items():
            before = earlier.servers.get(pid, (group, 0))[1]
            out[group] = out.get(group, 0.0) + (ticks - before) / _CLK_TCK
        out["this benchmark"] = self.bench - earlier.bench
        busy = sum((self.machine[k] - earlier.machine[k]) for k in ("user", "system")) / _CLK_TCK
        out["other processes"] = max(0.0, busy - sum(out.values()))
        for key in self.machine:
            out[f"machine {key}"] = (self.machine[key] - earlier.machine[key]) / _CLK_TCK
        return out


def machine_ticks() -> dict[str, int]:
    parts = (_read("/proc/stat") or "cpu 0 0 0 0 0").splitlines()[0].split()[1:]
    values = [int(v) for v in parts] + [0] * 8
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return {"user": user + nice, "system": system + irq + softirq, "idle": idle, "iowait": iowait,
            "steal": steal}


# --------------------------------------------------------------------------- workers

def dramatiq_command() -> list[str]:
    script = Path(sys.executable).parent / "dramatiq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dramatiq"]


@dataclass
class WorkerProcess:
    """One ``dramatiq billingworker.worker`` command: its master and the processes it forked."""

    name: str
    proc: subprocess.Popen
    log_path: Path
    processes: int
    log_file: Any = field(repr=False, default=None)
    ready_kb: dict[int, int] = field(default_factory=dict)
    peak_tree_kb: int = 0
    peak_kb: dict[int, int] = field(default_factory=dict)
    hwm_kb: dict[int, int] = field(default_factory=dict)
    killed: bool = False
    stop_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"worker {self.name} exited with {self.proc.returncode} while booting:\n{self.log()}")
            if self.log().count(READY_LINE) >= self.processes:
                return
            time.sleep(0.1)
        raise SystemExit(f"worker {self.name} did not boot in {READY_TIMEOUT:.0f} s:\n{self.log()}")

    def sample(self) -> None:
        """RSS of every process of the tree now, and the peaks."""
        total = 0
        for pid in process_tree(self.pid):
            rss = status_kb(pid, "VmRSS")
            total += rss
            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), rss)
            hwm = status_kb(pid, "VmHWM")
            if hwm:
                self.hwm_kb[pid] = hwm
        self.peak_tree_kb = max(self.peak_tree_kb, total)

    def start_measuring(self) -> None:
        for pid in process_tree(self.pid):
            self.ready_kb[pid] = status_kb(pid, "VmRSS")

    def role(self, pid: int) -> str:
        return "master" if pid == self.pid else "worker process"

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait_stopped(self, started: float) -> None:
        try:
            self.proc.wait(max(0.1, STOP_TIMEOUT - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            # Its own process group (start_new_session): this kills its master and the worker
            # processes it forked, nothing else.
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.killed = True
        self.stop_seconds = time.monotonic() - started
        if self.log_file is not None:
            self.log_file.close()
            self.log_file = None


def start_worker(name: str, workdir: Path, env: dict[str, str], processes: int, threads: int) -> WorkerProcess:
    log_path = workdir / f"worker-{name}.log"
    log_file = log_path.open("wb")
    modules = ["billingworker.worker"]
    proc = subprocess.Popen(
        [*dramatiq_command(), *modules, "--processes", str(processes), "--threads", str(threads),
         "--queues", *QUEUES],
        cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
        start_new_session=True)
    return WorkerProcess(name, proc, log_path, processes, log_file)


def worker_env(url: str, redis_url: str, mail_dir: Path, workdir: Path, args: argparse.Namespace) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_PORT"}  # one port cannot serve two workers
    env.update({
        "DATABASE_URL": url,
        "BROKER_URL": redis_url,
        "MAIL_URL": f"file://{mail_dir}",
        "MAIL_FROM": "Billing <billing@example.com>",
        "BILLING_TIME_ZONE": "UTC",
        "FAN_OUT_BATCH_SIZE": str(args.batch_size),
        "EXPORTS_DIR": str(workdir / "exports"),
        "PYTHONUNBUFFERED": "1",
        # The seeded cards are at the test gateway, which exists only when switched on.
        "PAYMENT_GATEWAYS": "test",
        "SERVER_MODULES": "test",
    })
    if args.poll_ms is not None:
        env["dramatiq_worker_timeout"] = str(args.poll_ms)
    return env


# --------------------------------------------------------------------------- Redis

@dataclass(frozen=True)
class QueueCounts:
    waiting: int
    delayed: int
    taken: int  # prefetched or running: in a worker's ack set
    outstanding: int  # not acknowledged yet (waiting + delayed + taken)


def queue_counts(client: redis.Redis) -> dict[str, QueueCounts]:
    """Every queue's messages in one snapshot. A message stays in ``<queue>.msgs`` from enqueue
    until it is acknowledged (its follow-ups are enqueued before that): all zero = nothing left."""
    acks = list(client.scan_iter(match=f"{NAMESPACE}:__acks__.*", count=1000))
    pipe = client.pipeline(transaction=True)
    for q in QUEUES:
        pipe.llen(f"{NAMESPACE}:{q}")
        pipe.hlen(f"{NAMESPACE}:{q}.DQ.msgs")
        pipe.hlen(f"{NAMESPACE}:{q}.msgs")
    for key in acks:
        pipe.scard(key)
    values = pipe.execute()
    taken: Counter[str] = Counter()
    for key, count in zip(acks, values[3 * len(QUEUES):], strict=True):
        name = key.decode() if isinstance(key, bytes) else key
        for q in QUEUES:
            if name.endswith(f".{q}") or name.endswith(f".{q}.DQ"):
                taken[q] += count
    out = {}
    for n, q in enumerate(QUEUES):
        waiting, delayed, msgs = values[3 * n: 3 * n + 3]
        out[q] = QueueCounts(waiting, delayed, taken[q], msgs + delayed)
    return out


def dead_letter_counts(client: redis.Redis) -> dict[str, int]:
    return {q: client.zcard(f"{NAMESPACE}:{q}.XQ") for q in QUEUES}


def redis_db(redis_url: str) -> int:
    return redis.Redis.from_url(redis_url).connection_pool.connection_kwargs.get("db", 0)


# --------------------------------------------------------------------------- the run

@dataclass
class Sample:
    t: float
    run_status: str | None
    queues: dict[str, QueueCounts]
    #: Outbox rows still queued (emails not yet sent): a deliver_emails message carries up to 100.
    emails_queued: int = 0


@dataclass
class TaskFigures:
    task: str
    status: str
    batches_total: int
    batches_done: int
    clients: int
    invoices: int
    credit: int
    fees: int
    captures: int
    emails: int
    failures: int
    start: float | None  # seconds after the enqueue
    end: float | None


@dataclass
class JobFigures:
    done: Counter = field(default_factory=Counter)
    busy: Counter = field(default_factory=Counter)  # thread-seconds inside the job, by actor
    task_done: Counter = field(default_factory=Counter)
    task_busy: Counter = field(default_factory=Counter)
    skipped_batches: int = 0
    refused: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.done.values())


@dataclass
class DayFigures:
    label: str
    clients: int
    services: int
    workers: list[WorkerProcess]
    seed: SeedFigures
    finished: bool = False
    seconds_to_run_end: float | None = None  # enqueue -> run no longer running (as polled)
    seconds_to_idle: float = 0.0  # enqueue -> run over and both queues empty
    run_status: str | None = None
    run_start: float | None = None
    run_end: float | None = None
    tasks: list[TaskFigures] = field(default_factory=list)
    jobs: JobFigures = field(default_factory=JobFigures)
    samples: list[Sample] = field(default_factory=list)
    eml_files: int = 0
    outbox: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    #: CPU seconds by process group, enqueue -> drained, and in the email tail (run over -> drained).
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_tail: dict[str, float] = field(default_factory=dict)
    database: str = ""
    job_failures: dict[str, int] = field(default_factory=dict)
    checks: list[Check] = field(default_factory=list)
    workdir: Path | None = None
    run_over_cpu: CpuSnapshot | None = None
    load_before: str = ""

    def peak_process_mb(self) -> float:
        """The largest VmHWM (peak RSS) of any worker process that runs jobs."""
        peaks = [kb for w in self.workers for pid, kb in w.hwm_kb.items() if pid != w.pid]
        return max(peaks, default=0) / 1024

    def peak_tree_mb(self) -> float:
        return max((w.peak_tree_kb for w in self.workers), default=0) / 1024

    def ready_process_mb(self) -> float:
        values = [kb for w in self.workers for pid, kb in w.ready_kb.items() if pid != w.pid]
        return max(values, default=0) / 1024


def run_day(url: str, args: argparse.Namespace, *, label: str, clients: int, services: int,
            seed: SeedFigures) -> DayFigures:
    """Start the workers, run the day, wait, stop them; figures and checks."""
    client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=3, socket_timeout=30)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise SystemExit(f"Redis at {args.redis_url} does not answer ({exc}); start it or pass --redis-url") from None
    client.flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="bench-daily-run-"))
    mail_dir = workdir / "mail"
    env = worker_env(url, args.redis_url, mail_dir, workdir, args)
    engine = create_db_engine(url)
    day = DayFigures(label, clients, services, [], seed, workdir=workdir,
                     database=make_url(normalise_url(url)).database or "")
    sender: RedisBroker | None = None
    try:
        boot = time.perf_counter()
        day.workers = [start_worker(f"w{n + 1}", workdir, env, args.processes, args.threads)
                       for n in range(args.workers)]
        for worker in day.workers:
            worker.wait_ready()
        say(f"{len(day.workers)} worker(s) ready in {time.perf_counter() - boot:.1f} s "
            f"({args.processes} process(es) x {args.threads} threads each, queues {' + '.join(QUEUES)}, "
            f"FAN_OUT_BATCH_SIZE={args.batch_size}, mail in {mail_dir})")
        day.load_before = (_read("/proc/loadavg") or "").strip()
        for worker in day.workers:
            worker.start_measuring()
        before = CpuSnapshot.take(day.workers, day.database)

        sender = RedisBroker(url=args.redis_url)
        started_wall = time.time()
        started = time.perf_counter()
        sender.enqueue(Message(queue_name="billing", actor_name="run_daily_automation", args=(),
                               kwargs={"as_of": args.as_of.isoformat(), "trigger": "bench"}, options={}))
        say(f"run_daily_automation(as_of={args.as_of}) enqueued; waiting (deadline {args.deadline:.0f} s)")
        day.finished = _wait(engine, client, day, started, args.deadline)
        day.seconds_to_idle = time.perf_counter() - started
        for worker in day.workers:
            worker.sample()  # the last one, VmHWM included
        after = CpuSnapshot.take(day.workers, day.database)
        day.cpu = after.seconds_since(before)
        if day.run_over_cpu is not None:
            day.cpu_tail = after.seconds_since(day.run_over_cpu)
        day.dead_letters = dead_letter_counts(client)
    finally:
        stop_workers(day.workers)
        if sender is not None:
            sender.close()
            sender.client.close()
        client.close()
    try:
        _collect(engine, day, started_wall)
        day.jobs = parse_logs(day.workers)
        day.eml_files = sum(1 for e in os.scandir(mail_dir) if e.name.endswith(".eml")) if mail_dir.is_dir() else 0
        day.checks = check_day(engine, day, args.as_of)
    finally:
        engine.dispose()
    return day


def _wait(engine: Engine, client: redis.Redis, day: DayFigures, started: float, deadline: float) -> bool:
    """Sample every SAMPLE_SECONDS until the run is over and both queues are empty."""
    last_progress = started
    while True:
        tick = time.perf_counter()
        for worker in day.workers:
            worker.sample()
        queues = queue_counts(client)
        with engine.connect() as conn:
            run = conn.execute(text("SELECT id, status FROM daily_runs ORDER BY id DESC LIMIT 1")).first()
            tasks = conn.execute(text(
                "SELECT task, status, batches_done, batches_total FROM daily_run_tasks WHERE run_id = :r "
                "ORDER BY position"), {"r": run.id}).all() if run is not None else []
            emails_queued = conn.execute(text(
                "SELECT count(*) FROM email_outbox WHERE status IN ('queued', 'sending')")).scalar()
        status = run.status if run is not None else None
        now = time.perf_counter() - started
        day.samples.append(Sample(now, status, queues, emails_queued))
        if status not in (None, "running") and day.seconds_to_run_end is None:
            day.seconds_to_run_end = now
            day.run_over_cpu = CpuSnapshot.take(day.workers, day.database)
        if status not in (None, "running") and not any(q.outstanding for q in queues.values()):
            return True
        for worker in day.workers:
            if worker.proc.poll() is not None:
                say(f"worker {worker.name} exited with {worker.proc.returncode} during the run")
                return False
        if tick - last_progress >= PROGRESS_SECONDS:
            last_progress = tick
            running = next((t for t in tasks if t.status == "running"), None)
            where = (f"{running.task} {running.batches_done}/{running.batches_total} batches" if running
                     else f"run {status or 'not started'}")
            say(f"  {now:6.1f} s  {where:<42} " + "  ".join(
                f"{q}: {c.waiting:,} waiting, {c.taken:,} taken" + (f", {c.delayed:,} delayed" if c.delayed else "")
                for q, c in queues.items()))
        if now >= deadline:
            say(f"deadline of {deadline:.0f} s reached: run {status}, queues {queues}")
            return False
        time.sleep(max(0.0, SAMPLE_SECONDS - (time.perf_counter() - tick)))


def stop_workers(workers: list[WorkerProcess]) -> None:
    """SIGTERM to every worker, then SIGKILL to the process group of any still alive after 15 s."""
    started = time.monotonic()
    for worker in workers:
        worker.terminate()
    for worker in workers:
        worker.wait_stopped(started)


def _collect(engine: Engine, day: DayFigures, started_wall: float) -> None:
    with engine.connect() as conn:
        run = conn.execute(text("""
            SELECT id, status, EXTRACT(EPOCH FROM started_at) AS s, EXTRACT(EPOCH FROM finished_at) AS f
            FROM daily_runs ORDER BY id DESC LIMIT 1""")).first()
        if run is not None:
            day.run_status = run.status
            day.run_start = float(run.s) - started_wall
            day.run_end = float(run.f) - started_wall if run.f is not None else None
            for r in conn.execute(text("""
                    SELECT task, status, batches_total, batches_done, clients, invoices_created, credit_applied,
                           fees_added, captures, emails_queued, failures,
                           EXTRACT(EPOCH FROM started_at) AS s, EXTRACT(EPOCH FROM finished_at) AS f
                    FROM daily_run_tasks WHERE run_id = :r ORDER BY position"""), {"r": run.id}):
                day.tasks.append(TaskFigures(
                    r.task, r.status, r.batches_total, r.batches_done, r.clients, r.invoices_created,
                    r.credit_applied, r.fees_added, r.captures, r.emails_queued, r.failures,
                    float(r.s) - started_wall if r.s is not None else None,
                    float(r.f) - started_wall if r.f is not None else None))
        day.outbox = dict(conn.execute(text("SELECT status, count(*) FROM email_outbox GROUP BY 1")).all())
        day.job_failures = dict(conn.execute(text(
            "SELECT actor || ': ' || error, count(*) FROM job_failures GROUP BY 1 ORDER BY 1")).all())


def parse_logs(workers: list[WorkerProcess]) -> JobFigures:
    """Every message a worker finished, from the ``job <actor> message <id> done in <s>`` line
    that ``billingworker.actors.base`` logs for each (refused and failed ones counted apart)."""
    jobs = JobFigures()
    for worker in workers:
        with worker.log_path.open(errors="replace") as log:
            for line in log:
                match = _JOB_LINE.search(line)
                if match is None:
                    # Dramatiq's text lines ("[ERROR]") or the workers' JSON lines ("level": "ERROR").
                    if len(jobs.errors) < 5 and any(mark in line for mark in _ERROR_MARKS):
                        jobs.errors.append(f"{worker.name}: {line.strip()[:300]}")
                    continue
                actor, outcome, seconds = match.group(1), match.group(3), match.group(4)
                if outcome == "refused":
                    jobs.refused += 1
                    continue
                if outcome == "failed":
                    jobs.failed += 1
                    continue
                jobs.done[actor] += 1
                jobs.busy[actor] += float(seconds)
                if actor == "run_daily_batch":
                    task = _BATCH_TASK.search(line)
                    if task is None:
                        jobs.skipped_batches += 1
                    else:
                        jobs.task_done[task.group(1)] += 1
                        jobs.task_busy[task.group(1)] += float(seconds)
    return jobs


# --------------------------------------------------------------------------- checks

def check_day(engine: Engine, day: DayFigures, as_of: date) -> list[Check]:
    """The books' checks (``billingworker reconcile``, through bench.generate_due_invoices), the
    reconciliation the run recorded when it finished, and the daily run's own checks."""
    from bench.generate_due_invoices import Check, verify
    from billingworker.domain.models import DailyRun
    from billingworker.domain.reports.reconciliation import recorded_reconciliation

    checks = verify(engine, as_of)
    with session_factory(engine)() as session:
        run_id = session.execute(select(DailyRun.id).where(DailyRun.run_date == as_of,
                                                           DailyRun.dry_run.is_(False))).scalar()
        recorded = recorded_reconciliation(session, run_id) if run_id is not None else None
    checks.append(Check("the run recorded its reconciliation, books clean", recorded is not None and recorded.clean,
                        "none recorded" if recorded is None else
                        f"findings per check: {({k: v['findings'] for k, v in recorded.counts.items()})}"))
    with engine.connect() as conn:
        def scalar(sql: str) -> Any:
            return conn.execute(text(sql)).scalar_one()

        not_done = scalar("SELECT count(*) FROM daily_run_tasks WHERE status <> 'done' "
                          "OR batches_done <> batches_total")
        checks.append(Check("the run succeeded, every task done with all its batches counted",
                            day.run_status == "succeeded" and not_done == 0,
                            f"run {day.run_status}, {not_done} task(s) not done"))
        batch_rows = scalar("SELECT count(*) FROM daily_run_batches")
        batches = sum(t.batches_total for t in day.tasks)
        checks.append(Check("every batch counted once", batch_rows == batches,
                            f"{batch_rows:,} batch rows for {batches:,} batches"))
        fees_twice = scalar("SELECT count(*) FROM (SELECT invoice_id FROM invoice_items WHERE item_type = 'late_fee'"
                            " GROUP BY 1 HAVING count(*) > 1) d")
        fee_lines, fee_rows = conn.execute(text(
            "SELECT (SELECT count(*) FROM invoice_items WHERE item_type = 'late_fee'),"
            " (SELECT count(*) FROM invoice_late_fees)")).one()
        checks.append(Check("at most one late fee per invoice (one line per invoice_late_fees row)",
                            fees_twice == 0 and fee_lines == fee_rows,
                            f"{fees_twice:,} invoices with several fees; {fee_lines:,} lines, {fee_rows:,} rows"))
        reminders_twice = scalar("SELECT count(*) FROM (SELECT invoice_id, stage FROM invoice_reminders"
                                 " GROUP BY 1, 2 HAVING count(*) > 1) d")
        reminder_emails_twice = scalar("""
            SELECT count(*) FROM (SELECT template, context FROM email_outbox
                                  WHERE template LIKE '%reminder' OR template LIKE '%notice'
                                  GROUP BY 1, 2 HAVING count(*) > 1) d""")
        checks.append(Check("at most one reminder row and one email per (invoice, stage)",
                            reminders_twice == 0 and reminder_emails_twice == 0,
                            f"{reminders_twice:,} rows, {reminder_emails_twice:,} emails repeated"))
        captures_twice = scalar("SELECT count(*) FROM (SELECT invoice_id FROM payment_captures"
                                " WHERE status = 'succeeded' GROUP BY 1 HAVING count(*) > 1) d")
        pending = scalar("SELECT count(*) FROM payment_captures WHERE status = 'pending'")
        payments_twice = scalar("SELECT count(*) FROM (SELECT invoice_id FROM transactions"
                                " GROUP BY 1 HAVING count(*) > 1) d")
        checks.append(Check("at most one succeeded capture (and one payment) per invoice, none left pending",
                            captures_twice == 0 and pending == 0 and payments_twice == 0,
                            f"{captures_twice:,} charged twice, {pending:,} pending, "
                            f"{payments_twice:,} invoices paid twice"))
        unrecorded = scalar("""
            SELECT count(*) FROM payment_captures c
            WHERE c.status = 'succeeded' AND NOT EXISTS (
                SELECT 1 FROM transactions t WHERE t.invoice_id = c.invoice_id AND t.gateway = c.gateway
                  AND t.transaction_id = c.gateway_reference)""")
        checks.append(Check("every succeeded capture is a payment recorded on its own invoice", unrecorded == 0,
                            f"{unrecorded:,} succeeded captures without their transaction (money taken, "
                            "invoice not paid)"))
        unsent = sum(n for status, n in day.outbox.items() if status not in ("sent", "skipped"))
        checks.append(Check("every outbox email sent or skipped", unsent == 0,
                            f"{unsent:,} not sent: {day.outbox}"))
        logged_twice = scalar("SELECT count(*) FROM (SELECT outbox_id FROM email_log GROUP BY 1"
                              " HAVING count(*) > 1) d")
        sent = day.outbox.get("sent", 0)
        checks.append(Check("every sent email delivered once (one email_log row, one .eml file)",
                            logged_twice == 0 and day.eml_files == sent,
                            f"{logged_twice:,} logged twice; {day.eml_files:,} .eml files for {sent:,} sent"))
        queued = sum(t.emails for t in day.tasks)
        outbox = sum(day.outbox.values())
        checks.append(Check("the outbox holds exactly the emails the tasks counted", queued == outbox,
                            f"tasks counted {queued:,}, outbox holds {outbox:,}"))
    dead = sum(day.dead_letters.values())
    checks.append(Check("no dead-lettered message", dead == 0, f"{day.dead_letters}"))
    return checks


# --------------------------------------------------------------------------- printing

def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def print_seed(seed: SeedFigures) -> None:
    say("\nthe seeded day")
    _row("seeding seconds", f"{seed.seed_seconds:,.1f}", "recreate + migrate + COPY the book + ANALYZE")
    _row("setup seconds", f"{seed.setup_seconds:,.1f}",
         f"settings, {seed.card_clients:,} auto-capture clients with a card ({seed.declining_cards:,} declining)")
    _row("pre-billing seconds", f"{seed.pre_bill_seconds:,.1f}",
         f"{seed.pre_bill_invoices:,} invoices billed on earlier days, + ANALYZE")
    _row("unpaid invoices before", f"{seed.unpaid_before:,}",
         f"{seed.overdue_before:,} overdue, {seed.late_before:,} at least {LATE_FEE_DAYS} days late")


def print_day(day: DayFigures, args: argparse.Namespace) -> None:
    jobs = day.jobs
    say(f"\ndaily run as of {args.as_of}: {day.clients:,} clients, {day.services:,} services, "
        f"{len(day.workers)} worker(s) x {args.processes} process(es) x {args.threads} threads")
    say(f"  /proc/loadavg before the run: {day.load_before} (see 'other processes' below for a busy machine)")
    if not day.finished:
        say("  THE RUN DID NOT FINISH (deadline, or a worker died): the figures are partial")
    header = (f"  {'task':<24} {'batches':>7} {'clients':>8} {'invoices':>8} {'credit':>6} {'fees':>7} "
              f"{'captures':>8} {'emails':>7} {'failures':>8} {'start s':>8} {'wall s':>7} {'gap s':>6} "
              f"{'busy thr-s':>10}")
    say(header)
    previous_end = day.run_start
    for t in day.tasks:
        wall = t.end - t.start if t.start is not None and t.end is not None else None
        gap = t.start - previous_end if t.start is not None and previous_end is not None else None
        previous_end = t.end
        say(f"  {t.task:<24} {t.batches_done:>3}/{t.batches_total:<3} {t.clients:>8,} {t.invoices:>8,} "
            f"{t.credit:>6,} {t.fees:>7,} {t.captures:>8,} {t.emails:>7,} {t.failures:>8,} {_secs(t.start):>8} "
            f"{_secs(wall):>7} {_secs(gap):>6} {jobs.task_busy.get(t.task, 0.0):>10,.1f}")
    say("  (start s: seconds after the enqueue; wall s: the task's finished_at - started_at; gap s: since the "
        "previous task finished;\n   busy thr-s: thread-seconds its batch jobs took, from the workers' job log lines)")

    starts = [t.start for t in day.tasks if t.start is not None]
    ends = [t.end for t in day.tasks if t.end is not None]
    overall = max(ends) - min(starts) if starts and ends and len(ends) == len(day.tasks) else None
    say("")
    _row("run: first task start -> last finish", _secs(overall), "seconds (daily_run_tasks)")
    _row("enqueue -> run row written", _secs(day.run_start), "seconds (run_daily_automation picked up)")
    _row("enqueue -> run succeeded", _secs(day.run_end), f"seconds (daily_runs.finished_at; status {day.run_status})")
    backlog = next((s.emails_queued for s in day.samples if s.run_status not in (None, "running")), None)
    _row("enqueue -> emails drained", f"{day.seconds_to_idle:,.2f}",
         "seconds: run over and both queues empty (the overall figure)"
         + (f"; {backlog:,} emails still queued at run end" if backlog is not None else ""))
    peak_emails = max(day.samples, key=lambda s: s.queues["emails"].outstanding, default=None)
    if peak_emails is not None:
        _row("email backlog peak", f"{peak_emails.queues['emails'].outstanding:,}",
             f"messages (deliver_emails carries up to 100 emails), at {peak_emails.t:,.1f} s")

    seconds = day.seconds_to_idle or float("nan")
    control = jobs.done["run_daily_automation"] + jobs.done["advance_daily_run"]
    say("")
    _row("messages processed", f"{jobs.total:,}",
         f"{control:,} control (run_daily_automation + advance_daily_run), "
         f"{jobs.done['run_daily_batch']:,} batches, {jobs.done['deliver_email']:,} deliver_email")
    others = {a: n for a, n in jobs.done.items()
              if a not in ("run_daily_automation", "advance_daily_run", "run_daily_batch", "deliver_email")}
    if others or jobs.refused or jobs.failed or jobs.skipped_batches:
        _row("", "", f"other {dict(others)}, {jobs.skipped_batches} batches skipped (already counted), "
             f"{jobs.refused} refused, {jobs.failed} failed attempts")
    _row("jobs/s", f"{jobs.total / seconds:,.0f}", "messages processed / (enqueue -> emails drained)")
    if jobs.done["deliver_email"]:
        _row("deliver_email busy", f"{jobs.busy['deliver_email']:,.1f}",
             f"thread-seconds, {1000 * jobs.busy['deliver_email'] / jobs.done['deliver_email']:.1f} ms per email")
    batch_busy = jobs.busy["run_daily_batch"]
    _row("run_daily_batch busy", f"{batch_busy:,.1f}",
         f"thread-seconds, {1000 * batch_busy / max(1, jobs.done['run_daily_batch']):.0f} ms per batch")
    sent, skipped = day.outbox.get("sent", 0), day.outbox.get("skipped", 0)
    _row("emails delivered (.eml)", f"{day.eml_files:,}", f"outbox: {sent:,} sent, {skipped:,} skipped")
    for reason, count in day.job_failures.items():
        _row("job_failures", f"{count:,}", reason)
    for line in jobs.errors:
        say(f"    log: {line}")

    say("\n  memory (RSS MB; sampled every 0.5 s from /proc, VmHWM = the kernel's peak per process)")
    for w in day.workers:
        for pid in sorted(w.hwm_kb):
            say(f"    {w.name} pid {pid:<8} {w.role(pid):<15} at ready {w.ready_kb.get(pid, 0) / 1024:7.1f}   "
                f"peak sampled {w.peak_kb.get(pid, 0) / 1024:7.1f}   VmHWM {w.hwm_kb[pid] / 1024:7.1f}")
        say(f"    {w.name} whole tree peak (sum of its processes) {w.peak_tree_kb / 1024:.1f}"
            + (f"; killed after {STOP_TIMEOUT:.0f} s" if w.killed else f"; stopped in {w.stop_seconds:.1f} s"))

    print_cpu("from enqueue to drained", day.cpu, day.seconds_to_idle, day.workers)


def print_cpu(title: str, cpu: dict[str, float], seconds: float, workers: list[WorkerProcess]) -> None:
    cores = os.cpu_count() or 1
    available = cores * seconds or float("nan")
    say(f"\n  CPU seconds {title} ({seconds:,.1f} s x {cores} cores = {available:,.1f} available)")
    for group in [*(w.name for w in workers), "postgres (this db)", "postgres (other)", "redis-server",
                  "this benchmark", "other processes"]:
        value = cpu.get(group, 0.0)
        note = " (dramatiq master + worker processes)" if group in {w.name for w in workers} else ""
        if group == "other processes":
            note = " (not this run: another load on the machine skews every figure)" if value > 0.05 * available \
                else " (the machine was otherwise quiet)"
        say(f"    {group:<20} {value:8.1f}  {100 * value / available:5.1f} %{note}")
    busy = cpu.get("machine user", 0) + cpu.get("machine system", 0)
    say(f"    {'machine busy':<20} {busy:8.1f}  {100 * busy / available:5.1f} % "
        f"(user {cpu.get('machine user', 0):.1f}, system {cpu.get('machine system', 0):.1f}; "
        f"idle {cpu.get('machine idle', 0):.1f}, "
        f"iowait {cpu.get('machine iowait', 0):.1f})")


def print_where(day: DayFigures) -> None:
    """Where the wall time went: the billing phase task by task, then the email tail."""
    if day.seconds_to_run_end is None:
        return
    say("\n  where the time goes")
    billing = day.run_end if day.run_end is not None else day.seconds_to_run_end
    parts = []
    for t in day.tasks:
        if t.start is not None and t.end is not None:
            parts.append(f"{t.task} {t.end - t.start:.1f} s ({100 * (t.end - t.start) / billing:.0f} %)")
    say(f"    billing phase, enqueue -> run succeeded: {billing:,.1f} s = " + ", ".join(parts))
    if day.cpu_tail and day.seconds_to_run_end:
        phase = {k: day.cpu.get(k, 0.0) - day.cpu_tail.get(k, 0.0) for k in day.cpu}
        workers = sum(phase.get(w.name, 0.0) for w in day.workers)
        available = (os.cpu_count() or 1) * day.seconds_to_run_end
        say(f"    CPU in the billing phase: workers {workers:,.1f} s, postgres (this db) "
            f"{phase.get('postgres (this db)', 0.0):,.1f} s, "
            f"other processes {phase.get('other processes', 0.0):,.1f} s, "
            f"machine busy {phase.get('machine user', 0.0) + phase.get('machine system', 0.0):,.1f} s "
            f"of {available:,.1f} s available")
    backlog = next((s.emails_queued for s in day.samples if s.run_status not in (None, "running")), 0)
    sent = day.outbox.get("sent", 0) + day.outbox.get("skipped", 0)
    say(f"    emails delivered during the billing phase: {max(0, sent - backlog):,} of {sent:,}")
    tail = day.seconds_to_idle - day.seconds_to_run_end
    if backlog and tail > 0:
        workers = sum(day.cpu_tail.get(w.name, 0.0) for w in day.workers)
        pg = day.cpu_tail.get("postgres (this db)", 0.0)
        say(f"    email tail, run succeeded -> drained: {tail:,.1f} s for {backlog:,} emails "
            f"({backlog / tail:,.0f} emails/s); CPU per email: workers {1000 * workers / backlog:.1f} ms, "
            f"postgres {1000 * pg / backlog:.1f} ms")
        print_cpu("in the email tail", day.cpu_tail, tail, day.workers)


def print_timeline(day: DayFigures) -> None:
    """Queue depths over the run, one line per ~10 % of it: which queue holds the work when."""
    if not day.samples:
        return
    say("\n  queues over time (outstanding = waiting + taken by a worker + delayed)")
    step = max(1, len(day.samples) // 10)
    shown = day.samples[::step] + ([day.samples[-1]] if (len(day.samples) - 1) % step else [])
    for s in shown:
        task = next((t.task for t in day.tasks if t.start is not None and t.start <= s.t
                     and (t.end is None or s.t < t.end)), "-" if s.run_status == "running" else s.run_status)
        say(f"    {s.t:7.1f} s  {task or '-':<24} billing {s.queues['billing'].outstanding:>7,}   "
            f"emails {s.queues['emails'].outstanding:>7,}   unsent emails {s.emails_queued:>7,}")


def print_memory_check(full: DayFigures, half: DayFigures) -> None:
    say("\nmemory check (peak RSS MB of a worker process that runs jobs, VmHWM; and of a whole worker tree)")
    for day in (full, half):
        _row(f"{day.clients:,} clients", f"{day.peak_process_mb():,.1f}",
             f"at ready {day.ready_process_mb():,.1f}; tree peak {day.peak_tree_mb():,.1f}; "
             f"run {day.seconds_to_idle:,.1f} s")
    growth = (full.peak_process_mb() - full.ready_process_mb()) - (half.peak_process_mb() - half.ready_process_mb())
    say(f"  doubling the clients grew a worker process's own memory by {growth:+,.1f} MB "
        "(flat = memory is bounded by the batch, not the book)")


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.daily_run",
        description="Seed PostgreSQL, run the whole daily run through real Dramatiq workers on Redis, "
                    "time it and check it.")
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help="the bench database, DROPPED and recreated (default $BENCH_DAILY_DATABASE_URL "
                             "or %(default)s)")
    parser.add_argument("--redis-url", default=DEFAULT_REDIS_URL,
                        help="a Redis database of its own, FLUSHED before each run (default $BENCH_REDIS_URL "
                             "or %(default)s)")
    parser.add_argument("--clients", type=int, default=50_000, help="clients to seed (default %(default)s)")
    parser.add_argument("--services", type=int, default=200_000, help="services to seed (default %(default)s)")
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.fromisoformat(DEFAULT_AS_OF),
                        help="the day of the run, YYYY-MM-DD (default %(default)s)")
    parser.add_argument("--random-seed", type=int, default=42, help="seed of the data generator")
    parser.add_argument("--workers", type=int, default=2,
                        help="dramatiq commands to start (default %(default)s: one per core)")
    parser.add_argument("--processes", type=int, default=1, help="--processes of each (default %(default)s)")
    parser.add_argument("--threads", type=int, default=4, help="--threads of each (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1000,
                        help="FAN_OUT_BATCH_SIZE: clients per batch message (default %(default)s)")
    parser.add_argument("--late-fee", choices=("fixed", "percent"), default="fixed",
                        help="late fee of 5.00 (fixed) or 10 %% (percent) after 3 days (default %(default)s)")
    parser.add_argument("--poll-ms", type=int, default=None,
                        help="dramatiq_worker_timeout for the workers: how long an idle consumer waits "
                             "between polls of an empty queue (Dramatiq's default, 1000, when not given)")
    parser.add_argument("--deadline", type=float, default=1800.0,
                        help="seconds to wait for the run and the queues (default %(default)s: the full size "
                             "takes about 650 s on 2 cores, most of it delivering ~108,000 emails)")
    parser.add_argument("--runs-memory-check", action="store_true",
                        help="run again on a second database (<name>_half) with half the clients and services, "
                             "to show that a worker's memory does not grow with the book")
    parser.add_argument("--keep-files", action="store_true",
                        help="keep the workers' logs and the .eml files (a temporary folder, printed)")
    args = parser.parse_args(argv)
    if min(args.clients, args.workers, args.processes, args.threads, args.batch_size) < 1:
        parser.error("--clients, --workers, --processes, --threads and --batch-size must be at least 1")
    if redis_db(args.redis_url) == 0:
        parser.error("refusing to flush Redis database 0 (the default broker's): give the bench its own database")
    return args


def measure(url: str, args: argparse.Namespace, *, clients: int, services: int, label: str) -> DayFigures:
    from bench.generate_due_invoices import print_checks

    say(f"\n=== {label}: {clients:,} clients, {services:,} services, "
        f"database {make_url(normalise_url(url)).database}")
    seed = prepare(url, clients=clients, services=services, as_of=args.as_of, random_seed=args.random_seed,
                   late_fee=args.late_fee, batch_size=args.batch_size)
    print_seed(seed)
    day = run_day(url, args, label=label, clients=clients, services=services, seed=seed)
    print_day(day, args)
    print_timeline(day)
    print_where(day)
    say("\nchecks")
    print_checks(day.checks)
    if args.keep_files or not day.finished or not all(c.ok for c in day.checks):
        say(f"  worker logs and .eml files kept in {day.workdir}")
    elif day.workdir is not None:
        shutil.rmtree(day.workdir, ignore_errors=True)
    return day


def main(argv: list[str] | None = None) -> int:
    from bench.generate_due_invoices import half_url

    args = parse_args(argv)
    url = normalise_url(args.database_url)
    full = measure(url, args, clients=args.clients, services=args.services, label="daily run")
    ok = full.finished and all(c.ok for c in full.checks)
    if args.runs_memory_check:
        half = measure(half_url(url), args, clients=max(1, args.clients // 2), services=args.services // 2,
                       label="memory check (half the clients)")
        ok = ok and half.finished and all(c.ok for c in half.checks)
        print_memory_check(full, half)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

