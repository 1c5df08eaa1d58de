"""Benchmark: one day's "generate due invoices" over a large seeded book (SPEC §4).

Recreates a PostgreSQL database, migrates it, seeds it (``bench.seed``), then runs the day's
generation through the same domain code the actor uses, batch by batch, one transaction per
batch. Prints what was billed, how fast, how many SQL statements it took and how much memory,
then checks the books with the reconciliation ``billingworker reconcile`` makes (nothing unbilled
or billed twice, gap-free numbers, totals add up...).

Run from the repository root::

    .venv/bin/python -m bench.generate_due_invoices --clients 2000 --services 8000

Timings are printed, never asserted. A failed correctness check makes the exit status 1.
"""

from __future__ import annotations

import argparse
import inspect
import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from multiprocessing import get_context
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import Engine, bindparam, create_engine, event, text  # noqa: E402
from sqlalchemy.engine import make_url  # noqa: E402
from sqlalchemy.engine.interfaces import ExecuteStyle  # noqa: E402

from bench.seed import seed as seed_database  # noqa: E402
from billingworker.db import create_db_engine, normalise_url, session_factory  # noqa: E402
from billingworker.migrate import upgrade_engine  # noqa: E402
from billingworker.store.dialect import as_mysql8  # noqa: E402

DEFAULT_URL = os.environ.get(
    "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/billingworker_bench")
#: The database we connect to in order to drop and create the bench database.
ADMIN_DATABASE = "test"
DEFAULT_AS_OF = "2026-01-15"
#: Print a progress line at most this often during generation, in seconds.
PROGRESS_SECONDS = 5.0



#: Set by --mysql8-forms (and inherited by the spawned generation processes).
MYSQL8_FORMS_ENV = "BENCH_MYSQL8_FORMS"


@event.listens_for(Engine, "engine_connect")
def _mysql8_forms(connection) -> None:
    """--mysql8-forms: MariaDB runs the store's MySQL 8 forms (no INSERT ... RETURNING)."""
    if os.environ.get(MYSQL8_FORMS_ENV) and connection.dialect.name in ("mysql", "mariadb"):
        as_mysql8(connection.dialect)


# --------------------------------------------------------------------------- the domain seam

def load_domain() -> tuple[Callable, Callable]:
    """``client_batches`` and ``generate_for_clients``, or a clear ImportError."""
    try:
        from billingworker.domain.billing.due_invoices import client_batches, generate_for_clients
    except ImportError as exc:
        raise ImportError(
            "bench.generate_due_invoices needs billingworker.domain.billing.due_invoices with "
            "client_batches(session, as_of, batch_size) and "
            "generate_for_clients(session, client_ids, as_of, *, queue_email=True) (SPEC §4), "
            f"which cannot be imported yet ({exc}). "
            "Run with --seed-only to seed and verify without generating."
        ) from exc
    return client_batches, generate_for_clients


def _call_client_batches(client_batches: Callable, session, as_of: date, batch_size: int):
    """``client_batches`` with or without an ``as_of`` parameter (both shapes have existed)."""
    if "as_of" in inspect.signature(client_batches).parameters:
        return client_batches(session, as_of=as_of, batch_size=batch_size)
    return client_batches(session, batch_size=batch_size)


# --------------------------------------------------------------------------- the database

def recreate_database(url: str) -> None:
    """DROP (with FORCE) and CREATE the database named in ``url``, through ``ADMIN_DATABASE``."""
    target = make_url(normalise_url(url))
    name = target.database
    if not name or name in (ADMIN_DATABASE, "postgres", "template0", "template1"):
        raise SystemExit(f"refusing to drop the database {name!r}: give the bench its own database")
    admin = create_engine(target.set(database=ADMIN_DATABASE), isolation_level="AUTOCOMMIT")
    try:
        quoted = admin.dialect.identifier_preparer.quote(name)
        with admin.connect() as conn:
            force = "" if admin.dialect.name in ("mysql", "mariadb") else " WITH (FORCE)"
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}{force}")
            conn.exec_driver_sql(f"CREATE DATABASE {quoted}")
    finally:
        admin.dispose()


def prepare_database(url: str, *, clients: int, services: int, as_of: date, random_seed: int,
                     reuse: bool) -> None:
    """Recreate, migrate and seed (or, with ``reuse``, only migrate) the bench database."""
    if not reuse:
        started = time.perf_counter()
        recreate_database(url)
        print(f"database {make_url(normalise_url(url)).database} recreated", flush=True)
        engine = create_db_engine(url)
        try:
            upgrade_engine(engine)
            print(f"migrated in {time.perf_counter() - started:.1f} s", flush=True)
            seed_database(engine, clients=clients, services=services, as_of=as_of, seed=random_seed)
        finally:
            engine.dispose()
        return
    engine = create_db_engine(url)
    try:
        upgrade_engine(engine)
        with engine.connect() as conn:
            invoices = conn.execute(text("SELECT count(*) FROM invoices")).scalar_one()
        if invoices:
            print(f"note: reusing a database that already holds {invoices:,} invoices; "
                  "this run bills only what is still due", flush=True)
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- measuring

class StatementCounter:
    """A ``before_cursor_execute`` listener: every round trip is one statement.

    An ``executemany`` counts as one statement, and its rows are counted apart. SQLAlchemy's
    "insertmanyvalues" sends a bulk INSERT as batches of multi-row statements: each batch is
    one statement, and the rows are counted once for the whole insert.
    """

    def __init__(self) -> None:
        self.statements = 0
        self.executemany = 0
        self.executemany_rows = 0
        self._last_context: Any = None

    def __call__(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.statements += 1
        if not executemany:
            return
        self.executemany += 1
        if getattr(context, "execute_style", None) is ExecuteStyle.INSERTMANYVALUES:
            if context is not self._last_context:
                self._last_context = context
                self.executemany_rows += len(context.compiled_parameters)
        elif parameters is not None:
            self.executemany_rows += len(parameters)


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB elsewhere


def _current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / (1024 * 1024)
    except (OSError, ValueError, IndexError):
        return _peak_rss_mb()


@dataclass
class RunFigures:
    batches: int = 0
    batches_seen: int = 0
    clients_processed: int = 0
    invoices_created: int = 0
    items_invoiced: int = 0
    emails_queued: int = 0
    failures: int = 0
    failure_samples: list[str] = field(default_factory=list)
    seconds: float = 0.0
    statements: int = 0
    #: Statements spent by ``client_batches`` listing the clients.
    listing_statements: int = 0
    executemany: int = 0
    executemany_rows: int = 0
    rss_before_mb: float = 0.0
    peak_rss_mb: float = 0.0
    tracemalloc_peak_mb: float | None = None


def run_generation(url: str, as_of: date, batch_size: int, *, queue_email: bool = True,
                   trace_memory: bool = False, progress: bool = True, worker: int = 0, workers: int = 1) -> dict:
    """One day's generation over every client, as the actor would run it: a batch per transaction.

    With ``workers`` > 1, this process takes every ``workers``-th batch starting at ``worker``,
    as several Dramatiq worker processes share the fan-out's batch messages in production.

    Meant to run in a fresh process, so that the peak RSS is the generation's own. Returns the
    figures as a plain dict (it crosses a process boundary).
    """
    client_batches, generate_for_clients = load_domain()
    engine = create_db_engine(url)
    counter = StatementCounter()
    figures = RunFigures()
    try:
        with engine.connect() as conn:  # open the first connection before the clock starts
            conn.execute(text("SELECT 1"))
        event.listen(engine, "before_cursor_execute", counter)
        new_session = session_factory(engine)
        figures.rss_before_mb = _current_rss_mb()
        if trace_memory:
            tracemalloc.start()
        reader = new_session()
        started = last_report = time.perf_counter()
        try:
            batches = iter(_call_client_batches(client_batches, reader, as_of, batch_size))
            while True:
                before = counter.statements
                client_ids = next(batches, None)
                figures.listing_statements += counter.statements - before
                if client_ids is None:
                    break
                index = figures.batches_seen
                figures.batches_seen += 1
                if index % workers != worker:
                    continue
                session = new_session()
                try:
                    result = generate_for_clients(session, client_ids, as_of, queue_email=queue_email)
                    session.commit()
                finally:
                    session.close()
                figures.batches += 1
                figures.clients_processed += len(client_ids)
                figures.invoices_created += result.invoices_created
                figures.items_invoiced += result.items_invoiced
                figures.emails_queued += result.emails_queued
                figures.failures += len(result.failures)
                for failure in result.failures[: max(0, 5 - len(figures.failure_samples))]:
                    figures.failure_samples.append(repr(failure)[:300])
                now = time.perf_counter()
                if progress and now - last_report >= PROGRESS_SECONDS:
                    last_report = now
                    elapsed = now - started
                    print(f"  ... {figures.batches:,} batches, {figures.clients_processed:,} clients, "
                          f"{figures.items_invoiced:,} items, {figures.invoices_created:,} invoices "
                          f"({figures.items_invoiced / elapsed:,.0f} items/s)", flush=True)
        finally:
            reader.close()
        figures.seconds = time.perf_counter() - started
        if trace_memory:
            figures.tracemalloc_peak_mb = tracemalloc.get_traced_memory()[1] / (1024 * 1024)
            tracemalloc.stop()
    finally:
        if event.contains(engine, "before_cursor_execute", counter):
            event.remove(engine, "before_cursor_execute", counter)
        if tracemalloc.is_tracing():
            tracemalloc.stop()
        engine.dispose()
    figures.statements = counter.statements
    figures.executemany = counter.executemany
    figures.executemany_rows = counter.executemany_rows
    figures.peak_rss_mb = _peak_rss_mb()
    return asdict(figures)


def run_in_child(url: str, as_of: date, batch_size: int, *, workers: int = 1, **kwargs: Any) -> RunFigures:
    """``run_generation`` in fresh (spawned) processes, ``workers`` of them side by side.

    The figures are summed; the time is the slowest worker's and the peak RSS the largest
    single worker's (memory per worker process is what an operator sizes).
    """
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(run_generation, url, as_of, batch_size, worker=n, workers=workers,
                               progress=kwargs.pop("progress", True) if n == 0 else False, **kwargs)
                   for n in range(workers)]
        parts = [RunFigures(**f.result()) for f in futures]
    total = RunFigures()
    for part in parts:
        for name in ("batches", "clients_processed", "invoices_created", "items_invoiced", "emails_queued",
                     "failures", "statements", "listing_statements", "executemany", "executemany_rows"):
            setattr(total, name, getattr(total, name) + getattr(part, name))
        total.failure_samples += part.failure_samples
    total.batches_seen = parts[0].batches_seen
    total.seconds = max(p.seconds for p in parts)
    total.rss_before_mb = max(p.rss_before_mb for p in parts)
    total.peak_rss_mb = max(p.peak_rss_mb for p in parts)
    peaks = [p.tracemalloc_peak_mb for p in parts if p.tracemalloc_peak_mb is not None]
    total.tracemalloc_peak_mb = max(peaks) if peaks else None
    return total


# --------------------------------------------------------------------------- checking

@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def verify(engine: Engine, as_of: date, *, skip: tuple[str, ...] = ()) -> list[Check]:
    """The books' checks, as ``billingworker reconcile`` makes them (SPEC §4, §7, §8, §15;
    ``billingworker.domain.reports.reconciliation``): one line per check, ``ok`` when it has no
    finding (explained ones aside). ``skip``: checks that do not apply (``due_billed`` on a book
    that was seeded but not billed). Prints how long the reconciliation took."""
    from datetime import UTC, datetime

    from billingworker.domain.reports.reconciliation import CHECKS, reconcile

    started = time.perf_counter()
    with session_factory(engine)() as session:
        result = reconcile(session, as_of, now=datetime.now(UTC))
    print(f"  reconciled as of {as_of} in {time.perf_counter() - started:.2f} s "
          f"({len(result.findings):,} findings, {len(result.explained()):,} of them explained)", flush=True)
    checks: list[Check] = []
    for name, counts in result.counts().items():
        if name in skip:
            continue
        errors = result.errors(name)
        examples = "; ".join(f"{f.table} {list(f.ids[:5])}: {f.reason}" for f in errors[:3])
        explained = f" ({counts['explained']:,} explained)" if counts["explained"] else ""
        checks.append(Check(f"{name}: {CHECKS[name]}{explained}", not errors,
                            f"{len(errors):,} findings, e.g. {examples}"))
    return checks


def estimate_due(engine: Engine, as_of: date) -> dict[str, int]:
    """Things due on ``as_of`` by a plain SQL reading of SPEC §4 (for comparison, not a check)."""
    from billingworker.domain.settings import load_settings

    with session_factory(engine)() as session:
        settings = load_settings(session)
        continuous = settings.continuous_invoice_generation
        driver = "next_invoice_date" if continuous else "next_due_date"
        statuses = list(settings.statuses_for_services())
        recurring = "billing_cycle NOT IN ('Free', 'One Time')"

        def count_due(sql: str, params: dict, *, domain: bool = False) -> int:
            stmt = text(sql).bindparams(bindparam("st", expanding=True))  # IN list: on every database
            rows = session.execute(stmt, params).all()
            return sum(n for cycle, when, n in rows
                       if when is not None and when <= as_of + timedelta(
                           days=settings.generation_days(cycle, domain=domain)))

        due = {
            "service": count_due(f"""
                SELECT billing_cycle, {driver}, count(*) FROM services s
                WHERE status IN :st AND {recurring}
                  AND NOT EXISTS (SELECT 1 FROM cancel_requests c WHERE c.service_id = s.id)
                GROUP BY 1, 2""", {"st": statuses}),
            "addon": count_due(f"""
                SELECT billing_cycle, {driver}, count(*) FROM addons a
                WHERE status IN :st AND {recurring}
                  AND NOT EXISTS (SELECT 1 FROM cancel_requests c WHERE c.service_id = a.service_id)
                GROUP BY 1, 2""", {"st": statuses}),
            "domain": count_due(f"""
                SELECT billing_cycle, {driver}, count(*) FROM domains
                WHERE status IN :st AND NOT do_not_renew AND {recurring} GROUP BY 1, 2""",
                                {"st": list(settings.domain_invoiceable_statuses)}, domain=True),
            "billable": session.execute(text("""
                SELECT count(*) FROM billable_items
                WHERE invoice_action = 'due_date' AND invoice_count = 0 AND due_date <= :until"""),
                {"until": as_of + timedelta(days=settings.invoice_generation_days)}).scalar_one(),
        }
    return due


def invoiced_by_type(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return dict(conn.execute(text(
            "SELECT item_type, count(*) FROM invoice_items GROUP BY item_type")).all())


def book_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {table: conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
                for table in ("clients", "services", "addons", "domains", "billable_items")}


# --------------------------------------------------------------------------- printing

def _row(label: str, value: str, note: str = "") -> None:
    print(f"  {label:<26} {value:>14}  {note}".rstrip(), flush=True)


def print_figures(figures: RunFigures, book: dict[str, int], batch_size: int) -> None:
    seconds = figures.seconds or float("nan")
    clients = figures.clients_processed or 1
    batches = figures.batches or 1
    _row("clients", f"{book['clients']:,}", f"{figures.clients_processed:,} listed in {figures.batches:,} "
         f"batches of up to {batch_size}")
    _row("services", f"{book['services']:,}", f"+ {book['addons']:,} addons, {book['domains']:,} domains, "
         f"{book['billable_items']:,} billable items")
    _row("items invoiced", f"{figures.items_invoiced:,}")
    _row("invoices created", f"{figures.invoices_created:,}")
    _row("emails queued", f"{figures.emails_queued:,}")
    _row("failures", f"{figures.failures:,}")
    for sample in figures.failure_samples:
        print(f"      {sample}")
    _row("seconds", f"{figures.seconds:,.2f}", "generation only (not seeding)")
    _row("items/s", f"{figures.items_invoiced / seconds:,.0f}")
    _row("invoices/s", f"{figures.invoices_created / seconds:,.0f}")
    _row("SQL statements", f"{figures.statements:,}",
         f"{figures.listing_statements:,} listing clients; {figures.executemany:,} executemany "
         f"carrying {figures.executemany_rows:,} rows")
    _row("statements per client", f"{figures.statements / clients:.2f}")
    _row("statements per batch", f"{figures.statements / batches:.1f}")
    _row("peak RSS MB", f"{figures.peak_rss_mb:,.1f}", f"{figures.rss_before_mb:,.1f} before generation")
    if figures.tracemalloc_peak_mb is not None:
        _row("tracemalloc peak MB", f"{figures.tracemalloc_peak_mb:,.1f}", "Python allocations during generation")


def print_checks(checks: list[Check]) -> bool:
    for check in checks:
        mark = "ok  " if check.ok else "FAIL"
        print(f"  [{mark}] {check.name}" + ("" if check.ok else f": {check.detail}"), flush=True)
    return all(c.ok for c in checks)


def print_due_comparison(engine: Engine, due: dict[str, int]) -> None:
    invoiced = invoiced_by_type(engine)
    print("  (info) things due before the run, by a plain SQL reading of SPEC §4 with this database's "
          "settings,\n         against the lines invoiced (all runs):")
    for kind, expected in due.items():
        print(f"    {kind:<10} due {expected:>10,}   invoiced {invoiced.get(kind, 0):>10,}")
    others = {k: v for k, v in invoiced.items() if k not in due}
    if others:
        print(f"    other lines: {others}")


# --------------------------------------------------------------------------- main

def half_url(url: str) -> str:
    parsed = make_url(normalise_url(url))
    return parsed.set(database=f"{parsed.database}_half").render_as_string(hide_password=False)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.generate_due_invoices",
        description="Seed a PostgreSQL database and time one day of 'generate due invoices'.")
    parser.add_argument("--database-url", default=DEFAULT_URL,
                        help="the bench database (DROPPED and recreated unless --no-seed); "
                             "default $BENCH_DATABASE_URL or %(default)s")
    parser.add_argument("--clients", type=int, default=50_000, help="clients to seed (default %(default)s)")
    parser.add_argument("--services", type=int, default=200_000, help="services to seed (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=1000, help="clients per batch (default %(default)s)")
    parser.add_argument("--as-of", type=date.fromisoformat, default=date.fromisoformat(DEFAULT_AS_OF),
                        help="the day to generate for, YYYY-MM-DD (default %(default)s)")
    parser.add_argument("--random-seed", type=int, default=42, help="seed of the data generator")
    parser.add_argument("--no-seed", action="store_true",
                        help="reuse the database as it is (only migrate it); don't drop, create or seed")
    parser.add_argument("--seed-only", action="store_true",
                        help="prepare and verify the database, don't generate (works without the domain code)")
    parser.add_argument("--no-email", action="store_true", help="generate with queue_email=False")
    parser.add_argument("--tracemalloc", action="store_true",
                        help="also report tracemalloc's peak for the generation (slows it down)")
    parser.add_argument("--runs-memory-check", action="store_true",
                        help="repeat the measurement on a second database with half the clients and "
                             "services, to show that memory does not grow with the number of clients")
    parser.add_argument("--repeat", action="store_true",
                        help="run the same day a second time and check that it creates nothing")
    parser.add_argument("--workers", type=int, default=2,
                        help="worker processes sharing the batches, as Dramatiq workers share the fan-out "
                             "(default 2: one per core of the reference machine)")
    parser.add_argument("--in-process", action="store_true",
                        help="generate in this process (for a profiler); peak RSS then includes seeding")
    parser.add_argument("--mysql8-forms", action="store_true",
                        help="on MariaDB: take the code written for MySQL 8 (no INSERT ... RETURNING)")
    args = parser.parse_args(argv)
    if args.mysql8_forms:
        os.environ[MYSQL8_FORMS_ENV] = "1"
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.in_process and args.runs_memory_check:
        parser.error("--runs-memory-check needs a fresh process per measurement: drop --in-process")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    url = normalise_url(args.database_url)
    generate = not args.seed_only
    if generate:
        load_domain()  # fail before minutes of seeding, not after

    prepare_database(url, clients=args.clients, services=args.services, as_of=args.as_of,
                     random_seed=args.random_seed, reuse=args.no_seed)
    options = {"queue_email": not args.no_email, "trace_memory": args.tracemalloc}

    def measure(target_url: str) -> RunFigures:
        if args.in_process:
            return RunFigures(**run_generation(target_url, args.as_of, args.batch_size, **options))
        return run_in_child(target_url, args.as_of, args.batch_size, workers=args.workers, **options)

    engine = create_db_engine(url)
    try:
        due_before = estimate_due(engine, args.as_of)
        figures = None
        if generate:
            print(f"generating due invoices as of {args.as_of}, batch size {args.batch_size}, "
                  f"{1 if args.in_process else args.workers} worker process(es)", flush=True)
            figures = measure(url)
            print(f"\ngenerate due invoices, as of {args.as_of}")
            print_figures(figures, book_counts(engine), args.batch_size)

        checks: list[Check] = []
        if args.repeat and generate:
            print("\nsecond run, same day", flush=True)
            again = measure(url)
            _row("seconds", f"{again.seconds:,.2f}")
            _row("SQL statements", f"{again.statements:,}")
            checks.append(Check("a second run on the same day creates nothing", again.invoices_created == 0
                                and again.items_invoiced == 0,
                                f"{again.invoices_created:,} invoices, {again.items_invoiced:,} items"))
        print("\nchecks (billingworker reconcile)")
        checks[:0] = verify(engine, args.as_of, skip=() if generate else ("due_billed",))
        ok = print_checks(checks)
        print_due_comparison(engine, due_before)
    finally:
        engine.dispose()

    if args.runs_memory_check and generate and figures is not None:
        small_url = half_url(url)
        print(f"\nmemory check: a second database with half the clients ({args.clients // 2:,})", flush=True)
        prepare_database(small_url, clients=max(1, args.clients // 2), services=args.services // 2,
                         as_of=args.as_of, random_seed=args.random_seed, reuse=False)
        small = measure(small_url)
        print("\nmemory check")
        _row("peak RSS MB, all clients", f"{figures.peak_rss_mb:,.1f}",
             f"{figures.clients_processed:,} clients (before generation {figures.rss_before_mb:,.1f})")
        _row("peak RSS MB, half", f"{small.peak_rss_mb:,.1f}",
             f"{small.clients_processed:,} clients (before generation {small.rss_before_mb:,.1f})")
        if figures.tracemalloc_peak_mb is not None and small.tracemalloc_peak_mb is not None:
            _row("tracemalloc MB, all", f"{figures.tracemalloc_peak_mb:,.1f}")
            _row("tracemalloc MB, half", f"{small.tracemalloc_peak_mb:,.1f}")
        growth = (figures.peak_rss_mb - figures.rss_before_mb) - (small.peak_rss_mb - small.rss_before_mb)
        print(f"  doubling the clients grew the generation's own memory by {growth:+,.1f} MB "
              "(flat = memory is bounded by the batch, not the book)")

    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
