"""Prometheus metrics: queue depth, dead letters, oldest message age, live workers, the last
daily run's counts and success time, whether the day's run is done, parked clients.

``OpsCollector`` reads the broker and the database at scrape time (a few Redis commands and
three small queries): nothing is cached, so every process that serves it reports the same
truth. It is served by ``billingworker metrics`` and, when ``PROMETHEUS_PORT`` is set, by
each ``dramatiq`` master next to Dramatiq's own worker metrics (see ``worker_metrics``).

prometheus_client is imported only inside functions: Dramatiq's Prometheus middleware needs
``PROMETHEUS_MULTIPROC_DIR`` set *before* the library's first import in a worker process.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from ..clock import as_utc
from ..db import get_engine, unit_of_work
from ..domain.models import DailyRun
from ..domain.reports.reconciliation import recorded_reconciliation
from ..domain.runs.daily_run import run_moment, run_time, scheduled_day
from ..domain.settings import load_settings
from ..queue_names import QUEUES
from .queues import NAMESPACE, read_broker_state
from .runs import TASK_COUNTS, count_parked, last_real_run, last_succeeded_run

log = logging.getLogger("billingworker.metrics")

#: The port ``billingworker metrics`` listens on by default: next to 9191, the port we give the
#: workers' exporter (``PROMETHEUS_PORT``), so both can run on one host.
DEFAULT_METRICS_PORT = 9192
RUN_STATUSES = ("running", "succeeded", "failed")


@dataclass(frozen=True)
class DueRun:
    """The daily run that should exist by now, as the scheduler sees it (``scheduled_day``)."""

    run_date: str
    #: When it was due: ``daily_run_time`` on ``run_date`` in the installation's time zone.
    due_at: datetime
    #: A real (non-dry) run of that day, or of a later one, succeeded.
    succeeded: bool


def due_run(session: Session, now: datetime, time_zone: str) -> DueRun:
    """The latest scheduled daily run (today's once ``daily_run_time`` has passed, else yesterday's)
    and whether it succeeded. Raises ``ValidationError`` when the settings do not parse.

    Exported so that an alert can say "not succeeded N hours after it was due" in the
    installation's own time zone and hour, following the setting when the admin panel changes it
    (a rule with ``hour()`` would only know UTC and a constant).
    """
    zone = ZoneInfo(time_zone)
    at = run_time(load_settings(session).daily_run_time)
    day = scheduled_day(now.astimezone(zone), at)
    # The instant the scheduler fires it: on a DST change the first of two repeated wall-clock
    # times, or the end of the hour that skips it (``run_moment``).
    due_at = run_moment(day, at, zone)
    succeeded = session.execute(select(DailyRun.id).where(
        DailyRun.dry_run.is_(False), DailyRun.status == "succeeded", DailyRun.run_date >= day).limit(1)).first()
    return DueRun(day.isoformat(), due_at, succeeded is not None)


class OpsCollector:
    """A prometheus_client collector (``collect``/``describe``) over the broker and the database.

    A source that does not answer is reported by ``billingworker_ops_source_up{source=...} 0``
    and its gauges are left out; the scrape itself never fails. The sources: ``broker``,
    ``database``, and ``schedule`` (the ``daily_run_time`` setting, 0 when it does not parse:
    the daily-run alert could not fire then, so that is an alert of its own).
    """

    def __init__(self, broker_url: str, database_url: str | None = None, *, engine: Engine | None = None,
                 queues: tuple[str, ...] = QUEUES, namespace: str = NAMESPACE,
                 clock: Callable[[], float] = time.time, time_zone: str | None = None) -> None:
        self.broker_url = broker_url
        self.database_url = database_url
        self._engine = engine
        self.queues = queues
        self.namespace = namespace
        self.clock = clock
        self._time_zone = time_zone

    @property
    def time_zone(self) -> str:
        """``BILLING_TIME_ZONE`` unless given: what "today" and ``daily_run_time`` mean."""
        if self._time_zone is None:
            from ..config import get_config

            self._time_zone = get_config().time_zone
        return self._time_zone

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = get_engine(self.database_url)
        return self._engine

    def describe(self) -> Iterable[Any]:
        # Nothing to describe up front: registering must not query the broker or the database.
        return []

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily("billingworker_ops_source_up",
                               "1 if the source answered this scrape, 0 if not.", labels=["source"])
        try:
            families = list(self._broker_families())
        except Exception:  # noqa: BLE001 - a down broker is a metric, not a failed scrape
            log.warning("metrics: the broker does not answer", exc_info=True)
            up.add_metric(["broker"], 0)
        else:
            up.add_metric(["broker"], 1)
            yield from families
        try:
            families = list(self._database_families())
        except Exception:  # noqa: BLE001 - same for the database
            log.warning("metrics: the database does not answer", exc_info=True)
            up.add_metric(["database"], 0)
        else:
            up.add_metric(["database"], 1)
            yield from families
            try:
                families = list(self._schedule_families())
            except Exception:  # noqa: BLE001 - a setting the admin panel broke: say so, keep the rest
                log.warning("metrics: the daily_run_time setting cannot be read", exc_info=True)
                up.add_metric(["schedule"], 0)
            else:
                up.add_metric(["schedule"], 1)
                yield from families
        yield up

    def _broker_families(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        state = read_broker_state(self.broker_url, self.queues, namespace=self.namespace,
                                  now_ms=int(self.clock() * 1000))
        messages = GaugeMetricFamily("billingworker_queue_messages",
                                     "Messages in a queue: waiting, delayed (retry backoff) or in progress.",
                                     labels=["queue", "state"])
        dead = GaugeMetricFamily("billingworker_dead_letters", "Dead-lettered messages of a queue.",
                                 labels=["queue"])
        age = GaugeMetricFamily("billingworker_queue_oldest_message_age_seconds",
                                "Age of the first waiting message of a queue (0 when none waits).", labels=["queue"])
        consumers = GaugeMetricFamily("billingworker_queue_consumers",
                                      "Worker processes consuming a queue (Redis: consumers seen within the "
                                      "heartbeat timeout that consume it; RabbitMQ: the queue's consumers).",
                                      labels=["queue"])
        for q in state.queues:
            if q.consumers is not None:
                consumers.add_metric([q.queue], q.consumers)
            for name in ("waiting", "delayed", "in_progress"):
                value = getattr(q, name)
                if value is not None:
                    messages.add_metric([q.queue, name], value)
            if q.dead is not None:
                dead.add_metric([q.queue], q.dead)
            if q.oldest_age_seconds is not None:
                age.add_metric([q.queue], q.oldest_age_seconds)
        yield from (messages, dead, age, consumers)
        if state.workers is not None:
            yield GaugeMetricFamily("billingworker_live_workers",
                                    "Worker processes consuming the queues (Redis: consumers seen within the "
                                    "heartbeat timeout, never a process that only enqueues; RabbitMQ: queue "
                                    "consumers).", value=state.workers)

    def _database_families(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with unit_of_work(self.engine) as session:
            last = last_real_run(session)
            success = last_succeeded_run(session)
            parked = count_parked(session)
            books = recorded_reconciliation(session)
        status = GaugeMetricFamily("billingworker_daily_run_last_status",
                                   "1 for the status of the last daily run (dry runs aside).", labels=["status"])
        counts = GaugeMetricFamily("billingworker_daily_run_last_count",
                                   "Counts of each task of the last daily run.", labels=["task", "count"])
        if last is not None:
            for name in RUN_STATUSES:
                status.add_metric([name], 1 if last.status == name else 0)
            for task in last.tasks:
                for name in TASK_COUNTS:
                    counts.add_metric([task.task, name], task.counts[name])
        yield status
        yield counts
        if last is not None:
            yield GaugeMetricFamily("billingworker_daily_run_last_failures",
                                    "job_failures rows written during the last daily run.", value=last.failures)
            yield GaugeMetricFamily("billingworker_daily_run_last_start_timestamp_seconds",
                                    "When the last daily run started (Unix time).",
                                    value=last.started_at.timestamp() if last.started_at else 0)
        yield GaugeMetricFamily("billingworker_daily_run_last_success_timestamp_seconds",
                                "When the last successful daily run finished (Unix time; 0 if none ever did).",
                                value=success.finished_at.timestamp() if success and success.finished_at else 0)
        yield GaugeMetricFamily("billingworker_parked_clients",
                                "Clients the daily run skips until an operator unparks them.", value=parked)
        if books is not None:
            # The reconciliation recorded when the last daily run finished (docs/operations.md#reconciliation).
            yield GaugeMetricFamily("billingworker_books_clean",
                                    "1 if the reconciliation of the last daily run found the books clean, else 0.",
                                    value=1 if books.clean else 0)
            findings = GaugeMetricFamily("billingworker_reconciliation_findings",
                                         "Findings (explained ones aside) per check of the last daily run's "
                                         "reconciliation.", labels=["check"])
            for check, counts in books.counts.items():
                findings.add_metric([check], counts.get("findings", 0))
            yield findings
            yield GaugeMetricFamily("billingworker_reconciliation_timestamp_seconds",
                                    "When the last daily run's reconciliation ran (Unix time).",
                                    value=as_utc(books.checked_at).timestamp())

    def _schedule_families(self) -> Iterable[Any]:
        from prometheus_client.core import GaugeMetricFamily

        with unit_of_work(self.engine) as session:
            due = due_run(session, datetime.fromtimestamp(self.clock(), UTC), self.time_zone)
        yield GaugeMetricFamily("billingworker_daily_run_due_timestamp_seconds",
                                "When the latest scheduled daily run was due (Unix time): daily_run_time today, "
                                "or yesterday until today's time has come.", value=due.due_at.timestamp())
        yield GaugeMetricFamily("billingworker_daily_run_due_succeeded",
                                "1 if a real run of the latest scheduled day (or a later one) succeeded, else 0.",
                                value=1 if due.succeeded else 0)


def make_registry(*collectors: Any) -> Any:
    """A registry of its own (not prometheus_client's global one) holding ``collectors``."""
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


def serve(registry: Any, port: int, host: str = "0.0.0.0") -> None:
    """Serve ``registry`` on http://host:port/metrics until interrupted."""
    from prometheus_client import start_http_server

    server, thread = start_http_server(port, addr=host, registry=registry)
    log.info("serving metrics on http://%s:%s/metrics", host, port)
    try:
        while thread.is_alive():
            thread.join(1)
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()


# --- inside the workers -------------------------------------------------------------------------

def prometheus_port() -> int | None:
    """``PROMETHEUS_PORT`` as a port number; None (off) when unset or empty (read by ``Config``)."""
    from ..config import get_config

    return get_config().prometheus_port


def worker_metrics():
    """Dramatiq's Prometheus middleware when ``PROMETHEUS_PORT`` is set, else None.

    Its exposition process (one per ``dramatiq`` command, whatever ``--processes``) serves on
    ``PROMETHEUS_PORT`` both Dramatiq's worker metrics and ``OpsCollector``: one port per host,
    instead of Dramatiq's own server on ``dramatiq_prom_port``.
    """
    if prometheus_port() is None:
        return None
    # Found, not imported: importing it here, before Dramatiq sets PROMETHEUS_MULTIPROC_DIR,
    # would keep the worker's metrics out of the shared files.
    if importlib.util.find_spec("prometheus_client") is None:
        raise RuntimeError("PROMETHEUS_PORT is set but prometheus-client is not installed")
    from dramatiq.middleware.prometheus import Prometheus

    class WorkerMetrics(Prometheus):
        @property
        def forks(self):
            return [serve_worker_metrics]

        def after_enqueue(self, broker, message, delay):
            # A process that only sends (billingworker enqueue, the scheduler) never boots
            # the metrics: nothing to count there.
            if hasattr(self, "total_retried_messages"):
                super().after_enqueue(broker, message, delay)

    return WorkerMetrics()


def serve_worker_metrics() -> int:
    """The exposition process forked by ``dramatiq`` (see ``worker_metrics``)."""
    from dramatiq.middleware.prometheus import DB_PATH

    os.environ["PROMETHEUS_MULTIPROC_DIR"] = DB_PATH
    from prometheus_client import multiprocess

    from ..config import get_config

    cfg = get_config()
    registry = make_registry(OpsCollector(cfg.broker_url, cfg.database_url, time_zone=cfg.time_zone))
    multiprocess.MultiProcessCollector(registry, path=DB_PATH)
    serve(registry, cfg.prometheus_port or 9191, cfg.prometheus_host)
    return 0
