"""The operator's and developer's entry point: ``billingworker --help``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from .config import get_config
from .ops.cli_support import ID, answering


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO (what the jobs do).")
@click.pass_context
def main(ctx: click.Context, verbose: bool) -> None:
    """billingworker: the billing automation worker.

    Logs go to stderr: LOG_LEVEL (default INFO for scheduler, metrics and console, WARNING for
    the other commands; -v: INFO) and LOG_FORMAT (json or text) as for the worker.
    """
    from .ops.logs import LoggingSetupError, command_log_level, configure_logging

    try:
        configure_logging(level=command_log_level(ctx.invoked_subcommand, verbose=verbose))
    except LoggingSetupError as exc:
        raise click.UsageError(str(exc)) from None


@main.group()
def db() -> None:
    """The shared database's schema."""


@db.command("upgrade")
@click.option("--revision", "--to", "revision", default="head", show_default=True, help="The revision to reach.")
@click.option("--sql", "sql", is_flag=True,
              help="Print the SQL script for DATABASE_URL's dialect instead of running it; connects to nothing. "
                   "mysql:// is spelled for MySQL 8, mariadb:// for MariaDB; not for SQLite.")
@click.option("--from", "from_", default=None, metavar="REV",
              help="--sql only: the revision the database is at (default: an empty database).")
def db_upgrade(revision: str, sql: bool, from_: str | None) -> None:
    """Create or upgrade the schema (Alembic migrations) at DATABASE_URL.

    With --sql, print the statements instead (for a DBA to review, or to run by hand); they
    include the alembic_version bookkeeping, so a later db upgrade carries on from there.
    """
    from .migrate import upgrade

    url = get_config().database_url
    if sql:
        from alembic.util import CommandError

        from .migrate import ScriptRefused, upgrade_script

        try:
            click.echo(upgrade_script(url, to=revision, from_=from_), nl=False)
        except ScriptRefused as exc:
            raise click.ClickException(str(exc)) from None
        except CommandError as exc:  # an unknown or out-of-order revision
            raise click.UsageError(f"--from/--to: {exc}") from None
        return
    if from_ is not None:
        raise click.UsageError("--from is for --sql only: an online upgrade starts where the database is")
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
@click.option("--as-of", default=None, metavar="YYYY-MM-DD",
              help="daily-run: the day to run; default today. A later day only with --dry-run.")
@click.option("--dry-run", is_flag=True, help="daily-run: report what the day would do, write nothing.")
@answering
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
    An unknown or missing argument, or a value the rules the job declares refuse (ids, dates,
    booleans, a real daily run of a future day), is refused here, exit status 2, and nothing is
    sent. Rules that need the database (an amount in the client's currency, a client that
    exists) are the job's: such a message is sent, and refused by the job (`failures`).
    """
    from .bootstrap import current_app
    from .ops.enqueue_check import DAILY_RUN_JOB, MessageRefused, check_message, find_job, parse_assignments
    from .ops.tables import InputRefused

    try:
        kwargs = parse_assignments(arguments)
        if actor == "daily-run":
            from . import runtime as rt
            from .ops.daily_cli import run_day

            if as_of is not None:
                # Said of --as-of, as `daily-run` says it; the job's own rule (``check_message``
                # below: ``actors.daily.no_real_run_ahead``) refuses the same for any sender.
                clock = rt.runtime().clock
                try:
                    run_day(as_of, today=clock.today(), dry_run=dry_run, zone=str(clock.zone))
                except InputRefused as exc:
                    raise MessageRefused("--as-of", exc.message) from None
            actor = DAILY_RUN_JOB
            kwargs.update({"as_of": as_of, "dry_run": dry_run, "trigger": "cli"})
        elif as_of is not None or dry_run:
            option = "--as-of" if as_of is not None else "--dry-run"
            raise MessageRefused(option, f"{option} is for daily-run only; give {actor} its arguments as NAME=VALUE")
        target = find_job(current_app().broker, actor)
        check_message(target, kwargs)
    except MessageRefused as exc:
        raise InputRefused(f"{exc}; nothing was enqueued") from None
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

    from .ops.samples import record_sample
    from .scheduler import Scheduler

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    from .bootstrap import current_app

    current = current_app().runtime  # the jobs it sends bound to the broker of BROKER_URL
    broker_url = get_config().broker_url
    Scheduler(current.engine, current.clock, stall_seconds=stall_seconds, relay_every_seconds=relay_every,
              relay_after_seconds=relay_after, claim_timeout=current.email_claim_timeout,
              sample=lambda now: record_sample(broker_url, now)).run_forever(stop, tick)


@main.command()
@click.argument("client_id", type=ID)
@answering
def unpark(client_id: int) -> None:
    """Let the daily run process a parked client again (its failure streak starts from 0)."""
    from .db import get_engine, unit_of_work
    from .domain.models import Client
    from .domain.runs.daily_run import unpark as unpark_client

    with unit_of_work(get_engine()) as session:
        if session.get(Client, client_id) is None:
            raise click.ClickException(f"client {client_id} does not exist")
        changed = unpark_client(session, client_id)
        session.commit()
    click.echo(f"client {client_id} unparked: the next daily run processes it again" if changed
               else f"client {client_id} was not parked: nothing to do")


@main.command()
@click.option("--client", "client_id", type=ID, default=None, help="Only this client's.")
@click.option("--run", "run_id", type=ID, default=None, help="Only this daily run's.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for scripts.")
@answering
def failures(client_id: int | None, run_id: int | None, limit: int, as_json: bool) -> None:
    """Clients and messages the jobs could not process (job_failures), newest first."""
    from .db import get_engine, unit_of_work
    from .ops.failures import recent_failures
    from .ops.tables import print_json, print_table

    with unit_of_work(get_engine()) as session:
        rows = recent_failures(session, limit=limit, client_id=client_id, run_id=run_id)
    if as_json:
        print_json([r.as_dict() for r in rows])
        return
    if not rows:
        click.echo("no failures recorded" + (" for these filters" if client_id or run_id else ""))
        return
    print_table(f"Failures (newest {len(rows)})", ["time (UTC)", "actor", "client", "run", "field", "reason",
                                                    "message id"],
                [[f"{r.created_at:%Y-%m-%d %H:%M:%S}" if r.created_at else None, r.actor,
                  f"{r.client_id} {r.client_name}".strip() if r.client_id is not None else None,
                  f"#{r.run_id}" if r.run_id else None, r.field or None, f"{r.error}: {r.reason}",
                  r.message_id or None] for r in rows])


def _safe(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


from .ops.cli import register as _register_ops  # noqa: E402 - operator commands live in ops/

_register_ops(main)

from .ops.daily_cli import daily_run as _daily_run  # noqa: E402
from .ops.demo_cli import seed_demo as _seed_demo  # noqa: E402
from .ops.settings_cli import settings as _settings  # noqa: E402

for _command in (_daily_run, _seed_demo, _settings):
    main.add_command(_command)

from .reports_cli import register as _register_reports  # noqa: E402 - statement, summary

_register_reports(main)

from .console.cli import register as _register_console  # noqa: E402 - the web console (console/)

_register_console(main)
