"""The operator's and developer's entry point: ``billingworker --help``."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from .config import get_config


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log what the jobs do.")
def main(verbose: bool) -> None:
    """billingworker: the billing automation worker."""
    from .ops.logs import configure_logging

    configure_logging(level=logging.INFO if verbose else logging.WARNING)


@main.group()
def db() -> None:
    """The shared database's schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Create or upgrade the schema (Alembic migrations) at DATABASE_URL."""
    from .migrate import upgrade

    url = get_config().database_url
    upgrade(url, revision)
    click.echo(f"database at {_safe(url)} is at revision {revision}")


@main.command()
@click.option("--database", type=click.Path(path_type=Path), default=Path("var/demo.sqlite3"), show_default=True,
              help="The SQLite file (recreated).")
@click.option("--mail-dir", type=click.Path(path_type=Path), default=Path("var/demo-mail"), show_default=True,
              help="Where the emails are written.")
@click.option("--threads", default=4, show_default=True, help="Worker threads.")
def demo(database: Path, mail_dir: Path, threads: int) -> None:
    """Run one day's generate_due_invoices on a fresh SQLite demo database, no server needed."""
    from .demo import DemoPaths, run_demo

    summary = run_demo(DemoPaths(database.resolve(), mail_dir.resolve()), workers=threads)
    if summary["invoices"] == 0:
        sys.exit("demo created no invoice: something is wrong")


@main.command()
@click.argument("actor")
@click.argument("arguments", nargs=-1)
@click.option("--as-of", default=None, help="daily-run: the day to run (YYYY-MM-DD); default today.")
@click.option("--dry-run", is_flag=True, help="daily-run: report what the day would do, write nothing.")
def enqueue(actor: str, arguments: tuple[str, ...], as_of: str | None, dry_run: bool) -> None:
    """Send a job to the broker.

    \b
    billingworker enqueue daily-run [--as-of 2026-01-15] [--dry-run]
    billingworker enqueue generate_due_invoices client_id=12 as_of=2026-01-15

    billingworker enqueue adjust_credit client_id=12 amount=-5.00 description="Goodwill"
    billingworker enqueue mass_update client_id=12 'items=[{"type": "service", "id": 7}]' \
        'changes={"next_due_date": "2026-02-06"}' create_prorata_invoice=true

    Each argument is NAME=VALUE where VALUE is JSON (a bare word is taken as a string). A number
    with a decimal point is sent as a string ("10.50"): the jobs take money as decimal strings.
    """
    from .actors import broker

    kwargs = {}
    for arg in arguments:
        name, sep, raw = arg.partition("=")
        if not sep:
            raise click.BadParameter(f"{arg!r} is not NAME=VALUE", param_hint="ARGUMENTS")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        # JSON floats lose cents, and every job refuses them: 10.50 is meant as money.
        kwargs[name] = raw.strip() if isinstance(value, float) else value
    if actor == "daily-run":
        actor = "run_daily_automation"
        kwargs.update({"as_of": as_of, "dry_run": dry_run, "trigger": "cron"})
    try:
        target = broker.get_actor(actor)
    except Exception:  # noqa: BLE001 - dramatiq raises ActorNotFound
        names = ", ".join(sorted(broker.get_declared_actors()))
        raise click.BadParameter(f"{actor!r} is not a job; jobs: daily-run, {names}", param_hint="ACTOR") from None
    message = target.send(**kwargs)
    click.echo(f"enqueued {actor} {json.dumps(kwargs)} as message {message.message_id}")


@main.command()
@click.option("--tick", default=10.0, show_default=True, help="Seconds between looks at the clock.")
@click.option("--stall-seconds", default=60, show_default=True, type=click.IntRange(min=1),
              help="Resume a run that counted no batch for this long.")
@click.option("--relay-every", default=60, show_default=True, type=click.IntRange(min=1),
              help="Seconds between two relays of the email and module-command outboxes.")
@click.option("--relay-after", default=None, type=click.IntRange(min=1),
              help="Relay emails still queued this many seconds after they were written [default: 60].")
def scheduler(tick: float, stall_seconds: int, relay_every: int, relay_after: int | None) -> None:
    """Fire the daily run at the configured local time, once per day (run as many as you like);
    resume stalled runs and relay the outboxes."""
    import signal
    import threading

    from . import runtime as rt
    from .scheduler import Scheduler

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    current = rt.runtime()
    Scheduler(current.engine, current.clock, stall_seconds=stall_seconds,
              relay_every_seconds=relay_every, relay_after_seconds=relay_after).run_forever(stop, tick)


@main.command("daily-run")
@click.option("--as-of", default=None, help="The day to run (YYYY-MM-DD); default today.")
@click.option("--dry-run", is_flag=True, help="Report what the day would do; write nothing.")
@click.option("--threads", default=4, show_default=True)
def daily_run(as_of: str | None, dry_run: bool, threads: int) -> None:
    """Run the day in the foreground (in-process broker and workers), with progress."""
    import os
    import time as _time
    from datetime import date

    os.environ["BROKER_URL"] = "stub://"
    from dramatiq import Worker
    from sqlalchemy import select

    from . import runtime as rt
    from .actors import broker
    from .actors.daily import dry_run_day, start_day
    from .db import unit_of_work
    from .domain.models import DailyRun, DailyRunTask

    current = rt.runtime()
    day = date.fromisoformat(as_of) if as_of else current.clock.today()
    if dry_run:
        report = dry_run_day(day)
        for task, result in report.items():
            click.echo(f"{task:<24} clients {result.clients:>7}  invoices {result.invoices_created:>6}  "
                       f"fees {result.fees_added:>5}  captures {result.captures:>5}  emails {result.emails_queued:>6}  "
                       f"failures {len(result.failures):>4}  amount {result.amount}  ({len(result.preview)} lines)")
            for line in result.preview[:50]:
                click.echo(f"    {json.dumps(line)}")
        return
    worker = Worker(broker, worker_threads=threads)
    worker.start()
    try:
        started = start_day(day, trigger="cli")
        if not started["started"]:
            click.echo(f"{day}: {started['reason']}")
            return
        run_id = started["run_id"]
        while True:
            with unit_of_work(current.engine) as session:
                run = session.get(DailyRun, run_id)
                tasks = list(session.execute(select(DailyRunTask).where(DailyRunTask.run_id == run_id)
                                             .order_by(DailyRunTask.position)).scalars())
            line = "  ".join(f"{t.task}: {t.batches_done}/{t.batches_total}" for t in tasks if t.status != "pending")
            click.echo(f"\r{line}", nl=False)
            if run.status != "running":
                break
            _time.sleep(0.5)
        broker.join("emails", fail_fast=False)
        click.echo(f"\nrun {run_id} for {day}: {run.status}")
        for t in tasks:
            click.echo(f"  {t.task:<24} clients {t.clients:>7}  invoices {t.invoices_created:>6}  "
                       f"fees {t.fees_added:>5}  captures {t.captures:>5}  credit {t.credit_applied:>5}  "
                       f"emails {t.emails_queued:>6}  failures {t.failures:>4}")
    finally:
        worker.stop()


@main.command()
@click.argument("client_id", type=int)
def unpark(client_id: int) -> None:
    """Let the daily run process a parked client again."""
    from .db import get_engine, unit_of_work
    from .domain.daily_run import unpark as unpark_client

    with unit_of_work(get_engine()) as session:
        changed = unpark_client(session, client_id)
        session.commit()
    click.echo(f"client {client_id} unparked" if changed else f"client {client_id} was not parked")


@main.command()
@click.option("--limit", default=50, show_default=True)
@click.option("--client", "client_id", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
def failures(limit: int, client_id: int | None, as_json: bool) -> None:
    """Clients and messages the jobs could not process, newest first."""
    from sqlalchemy import select

    from .db import get_engine, unit_of_work
    from .domain.models import JobFailure

    with unit_of_work(get_engine()) as session:
        stmt = select(JobFailure).order_by(JobFailure.id.desc()).limit(limit)
        if client_id is not None:
            stmt = stmt.where(JobFailure.client_id == client_id)
        rows = list(session.execute(stmt).scalars())
    if as_json:
        click.echo(json.dumps([{"id": r.id, "actor": r.actor, "message_id": r.message_id, "client_id": r.client_id,
                                "error": r.error, "field": r.field, "reason": r.reason,
                                "at": r.created_at.isoformat() if r.created_at else None} for r in rows], indent=2))
        return
    if not rows:
        click.echo("no failures recorded")
    for r in rows:
        click.echo(f"{r.created_at:%Y-%m-%d %H:%M}  {r.actor:<24} client {r.client_id!s:<8} {r.error}: {r.reason}")


@main.group()
def settings() -> None:
    """Installation settings (SPEC §2), kept in the shared database."""


@settings.command("show")
def settings_show() -> None:
    from dataclasses import asdict

    from .db import get_engine, unit_of_work
    from .domain.settings import load_settings

    with unit_of_work(get_engine()) as session:
        for name, value in asdict(load_settings(session)).items():
            click.echo(f"{name} = {value}")


@settings.command("set")
@click.argument("assignments", nargs=-1, required=True)
def settings_set(assignments: tuple[str, ...]) -> None:
    """billingworker settings set invoice_generation_days=10 late_fee_amount='"5.00"'"""
    from .db import get_engine, unit_of_work
    from .domain.settings import save_settings

    values = {}
    for arg in assignments:
        name, _, raw = arg.partition("=")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    with unit_of_work(get_engine()) as session:
        save_settings(session, **values)
        session.commit()
    click.echo("saved")


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


from .ops.cli import register as _register_ops  # noqa: E402 - operator commands live in ops/

_register_ops(main)

from .reports_cli import register as _register_reports  # noqa: E402 - statement, summary

_register_reports(main)
