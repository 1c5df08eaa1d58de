"""``billingworker health``: is this installation able to bill? For orchestrators and monitors.

Four checks, each answering ok or the reason it is not: the database answers ``SELECT 1``,
the broker answers (Redis ``PING``, an AMQP connection), a worker consumes the queues (Redis: a
consumer recorded itself within ``max_worker_silence`` seconds, ``ops.consumers``; RabbitMQ:
the queues have consumers), and the last real daily run did not fail and a run succeeded
recently enough.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.pool import NullPool

from ..db import create_db_engine, unit_of_work
from ..queue_names import QUEUES
from .consumers import read_consumers
from .logs import redact_text
from .queues import CONNECT_TIMEOUT, broker_kind, read_rabbitmq_state, redis_client, safe_url
from .runs import last_real_run, last_succeeded_run

#: Hours since the last successful daily run after which the installation is unhealthy: a day
#: plus slack for a run that starts late or takes long.
DEFAULT_MAX_AGE_HOURS = 26.0
#: Seconds without any consuming worker seen after which the installation is unhealthy (workers
#: record themselves every 10 s: a worker restart fits well inside). HEALTH_MAX_WORKER_SILENCE overrides it.
DEFAULT_MAX_WORKER_SILENCE = 120.0
MAX_WORKER_SILENCE_ENV = "HEALTH_MAX_WORKER_SILENCE"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Health:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}


def check_health(database_url: str, broker_url: str, *, now: datetime, run_check: bool = True,
                 max_age_hours: float = DEFAULT_MAX_AGE_HOURS, worker_check: bool = True,
                 max_worker_silence: float = DEFAULT_MAX_WORKER_SILENCE) -> Health:
    """Run every check (none stops the others) and say what each found. ``now`` is aware (UTC)."""
    broker = check_broker(broker_url)
    workers = []
    if worker_check:
        workers = [check_workers(broker_url, now=now, max_silence=max_worker_silence) if broker.ok
                   else Check("workers", False, "not checked: the broker does not answer")]
    try:
        engine = _engine(database_url)
    except Exception as exc:  # noqa: BLE001 - a malformed DATABASE_URL is the finding
        checks = [Check("database", False, f"DATABASE_URL cannot be used: {_first_line(exc)}"), broker, *workers]
        if run_check:
            checks.append(Check("daily_run", False, "not checked: the database does not answer"))
        return Health(checks)
    try:
        checks = [check_database(engine, database_url), broker, *workers]
        if run_check:
            if checks[0].ok:
                checks.append(check_daily_run(engine, now=now, max_age_hours=max_age_hours))
            else:
                checks.append(Check("daily_run", False, "not checked: the database does not answer"))
    finally:
        engine.dispose()
    return Health(checks)


def _engine(url: str) -> Engine:
    # A throwaway engine without a pool: a health probe must not keep connections open.
    connect_args = {"connect_timeout": CONNECT_TIMEOUT} if url.startswith("postgres") else {}
    if connect_args:
        return create_db_engine(url, poolclass=NullPool, connect_args=connect_args)
    return create_db_engine(url, poolclass=NullPool)


def check_database(engine: Engine, url: str) -> Check:
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to answer is the finding
        return Check("database", False, f"{_safe_db(url)} does not answer: {_first_line(exc)}")
    return Check("database", True, f"{_safe_db(url)} answers")


def check_broker(url: str) -> Check:
    try:
        kind = broker_kind(url)
        if kind == "redis":
            client = redis_client(url)
            try:
                client.ping()
            finally:
                client.close()
        elif kind == "rabbitmq":
            import pika

            params = pika.URLParameters(url)
            params.socket_timeout = CONNECT_TIMEOUT
            pika.BlockingConnection(params).close()
        else:
            return Check("broker", True, "stub:// (in-process broker): nothing to reach")
    except Exception as exc:  # noqa: BLE001 - any failure to answer is the finding
        return Check("broker", False, f"{safe_url(url)} does not answer: {_first_line(exc)}")
    return Check("broker", True, f"{safe_url(url)} answers")


def check_workers(url: str, *, now: datetime, max_silence: float = DEFAULT_MAX_WORKER_SILENCE) -> Check:
    """Unhealthy when a queue of ``QUEUES`` had no consuming worker in the last ``max_silence``
    seconds: on Redis, no consumer record that recent naming it (a process that only enqueues
    never writes one); on RabbitMQ, no consumer on it now. A worker started with ``--queues
    emails`` alone leaves billing unconsumed: unhealthy."""
    try:
        kind = broker_kind(url)
        if kind == "redis":
            client = redis_client(url)
            try:
                now_ms = int(now.timestamp() * 1000)
                live = read_consumers(client, now_ms=now_ms, within_ms=int(max_silence * 1000))
                last = None if live else read_consumers(client, now_ms=now_ms)
            finally:
                client.close()
        elif kind == "rabbitmq":
            state = read_rabbitmq_state(url)
            workers = state.workers or 0
            idle = [q.queue for q in state.queues if not q.consumers]
            if not workers:
                return Check("workers", False, "no consumer on the queues: start `dramatiq billingworker.worker`")
            if idle:
                return Check("workers", False, f"no consumer on the {', '.join(idle)} queue(s) ({workers} on the "
                                               "others): start `dramatiq billingworker.worker` for every queue")
            return Check("workers", True, f"{workers} consumer(s) on the queues")
        else:
            return Check("workers", True, "stub:// (in-process broker): the worker runs in the process")
    except Exception as exc:  # noqa: BLE001 - any failure to answer is the finding
        return Check("workers", False, f"cannot read the consumers: {_first_line(exc)}")
    if live:
        names = ", ".join(f"{c.host} pid {c.pid}" for c in live[:5]) + (" ..." if len(live) > 5 else "")
        idle = [q for q in QUEUES if not any(c.consumes(q) for c in live)]
        if idle:
            return Check("workers", False, f"no consuming worker of the {', '.join(idle)} queue(s) seen in the last "
                                           f"{max_silence:g} s ({len(live)} consume only the others: {names}); "
                                           "start `dramatiq billingworker.worker` for every queue")
        return Check("workers", True, f"{len(live)} consuming worker(s) seen in the last {max_silence:g} s ({names})")
    if last:
        gone = last[0]
        return Check("workers", False, f"no consuming worker seen in the last {max_silence:g} s (the last one, "
                                       f"{gone.host} pid {gone.pid}, {gone.last_seen_seconds_ago:.0f} s ago)")
    return Check("workers", False, f"no consuming worker seen in the last {max_silence:g} s (none recorded: "
                                   "start `dramatiq billingworker.worker`)")


def check_daily_run(engine: Engine, *, now: datetime, max_age_hours: float = DEFAULT_MAX_AGE_HOURS) -> Check:
    """Unhealthy when the last real run failed, or no run succeeded in the last ``max_age_hours``.

    A run still going is fine as long as the previous success is recent enough (a run stuck
    for a day fails the age rule).
    """
    try:
        with unit_of_work(engine) as session:
            last = last_real_run(session)
            success = last_succeeded_run(session)
    except Exception as exc:  # noqa: BLE001 - e.g. the schema is not migrated
        return Check("daily_run", False, f"cannot read daily_runs: {_first_line(exc)}")
    if last is None:
        return Check("daily_run", False, "no daily run has ever run")
    if last.status == "failed":
        return Check("daily_run", False, f"the last daily run (#{last.id} of {last.run_date}) failed")
    if success is None or success.finished_at is None:
        return Check("daily_run", False, f"no daily run has succeeded yet (last: #{last.id} of {last.run_date}, "
                                         f"{last.status})")
    age = now - success.finished_at
    if age > timedelta(hours=max_age_hours):
        return Check("daily_run", False, f"the last successful daily run (#{success.id} of {success.run_date}) "
                                         f"finished {age.total_seconds() / 3600:.1f} h ago (limit {max_age_hours:g} h)")
    detail = f"#{success.id} of {success.run_date} succeeded {age.total_seconds() / 3600:.1f} h ago"
    if last.id != success.id:
        detail += f"; #{last.id} of {last.run_date} is {last.status}"
    return Check("daily_run", True, detail)


def _safe_db(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparseable URL is shown as nothing rather than leaked
        return "DATABASE_URL"


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return redact_text(f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": "))
