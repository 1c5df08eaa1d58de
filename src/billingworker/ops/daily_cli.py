"""``billingworker daily-run``: the day's run in the foreground (an in-process broker and worker
threads) with its progress, or ``--dry-run``: what the day would do, as tables.

A foreground run keeps its state in the database like any run. Interrupted (Ctrl-C) or failed,
it stays ``running`` with the batches it counted: nothing done is lost or done twice. The
scheduler resumes a run that has not moved for its ``--stall-seconds`` (60) on the workers of
``BROKER_URL``; ``daily-run --resume N`` finishes it here. The command says so when it stops.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import click

from .cli_support import ID, answering
from .tables import Column, InputRefused, console, money_by_currency, print_json, print_table, totals_by_currency

#: Seconds between two looks at the run's progress.
POLL_SECONDS = 0.3
#: Preview lines shown per task in a dry run's table (``--json`` has them all).
PREVIEW_LINES = 50
#: The key of a preview line that holds its amount, first match wins: a late fee line also carries
#: the invoice total after it, which is not what the fee costs.
AMOUNT_KEYS = ("fee", "credit", "amount", "total")
#: Exit status of an interrupted foreground run (as a shell reports Ctrl-C).
INTERRUPTED = 130


@click.command("daily-run")
@click.option("--as-of", default=None, metavar="YYYY-MM-DD",
              help="The day to run; default today (BILLING_TIME_ZONE). A later day only with --dry-run.")
@click.option("--dry-run", is_flag=True, help="Report what the day would do; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: one JSON document, for scripts.")
@click.option("--threads", default=4, show_default=True, type=click.IntRange(1, 64), help="Worker threads.")
@click.option("--resume", "resume_id", type=ID, default=None, metavar="RUN",
              help="Finish a run left running (an interrupted foreground run), here.")
@answering
def daily_run(as_of: str | None, dry_run: bool, as_json: bool, threads: int, resume_id: int | None) -> None:
    """Run the day in the foreground (in-process broker and workers), with progress.

    Interrupted (Ctrl-C) or failed, the run stays `running` with what it did: the scheduler
    resumes it on the workers, or `billingworker daily-run --resume RUN` finishes it here.
    """
    from .. import runtime as rt
    from ..bootstrap import bootstrap_in_process
    from ..db import get_engine

    bootstrap_in_process()  # the jobs run here, on the in-process broker

    current = rt.configure(engine=get_engine())
    day = run_day(as_of, today=current.clock.today(), dry_run=dry_run, zone=str(current.clock.zone))
    if dry_run:
        from ..actors.day_preview import preview_day

        report = dry_run_view(current.engine, day, preview_day(day))
        if as_json:
            print_json(report)
        else:
            render_dry_run(report)
        return
    if as_json:
        raise InputRefused("--json: only with --dry-run (a real run shows its progress)")
    _run_in_foreground(current, day, threads, resume_id)


def run_day(as_of: str | None, *, today: date, dry_run: bool, zone: str = "UTC") -> date:
    """The day ``--as-of`` names (the jobs' own date rule), today by default. A real run of a
    day after today is refused: it would take that day's only run before the day's data exists."""
    from ..actors.arguments import parse_date
    from ..domain.errors import ValidationError

    try:
        day = parse_date("--as-of", as_of) or today
    except ValidationError as exc:
        raise InputRefused(str(exc)) from None
    if day > today and not dry_run:
        raise InputRefused(f"--as-of: {day} is after today ({today} in {zone}); a real run of a future day would "
                           f"take that day's only run early. Preview it with --dry-run.")
    return day


# --- the foreground run ---------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskProgress:
    task: str
    status: str
    batches_done: int
    batches_total: int
    counts: dict[str, int]


def snapshot(engine, run_id: int) -> tuple[str, list[TaskProgress]]:
    """The run's status and its tasks, read into plain data inside the session."""
    from sqlalchemy import select

    from ..db import unit_of_work
    from ..domain.models import DailyRun, DailyRunTask
    from .runs import TASK_COUNTS

    with unit_of_work(engine) as session:
        status = session.execute(select(DailyRun.status).where(DailyRun.id == run_id)).scalar()
        tasks = [TaskProgress(t.task, t.status, t.batches_done, t.batches_total,
                              {name: getattr(t, name) for name in TASK_COUNTS})
                 for t in session.execute(select(DailyRunTask).where(DailyRunTask.run_id == run_id)
                                          .order_by(DailyRunTask.position)).scalars()]
    return status or "missing", tasks


def pause(seconds: float) -> None:
    """Between two looks at the progress (a seam for the tests' Ctrl-C)."""
    time.sleep(seconds)


def _run_in_foreground(current, day: date, threads: int, resume_id: int | None) -> None:
    from dramatiq import Worker

    from ..actors import advance_daily_run
    from ..actors.daily import resend_missing_batches, start_day
    from ..bootstrap import current_app

    broker = current_app().broker
    worker = Worker(broker, worker_threads=threads)
    worker.start()
    run_id: int | None = None
    try:
        if resume_id is not None:
            status, tasks = snapshot(current.engine, resume_id)
            if status != "running":
                raise click.ClickException(f"run #{resume_id} is {status}: there is nothing to resume")
            run_id = resume_id
            # The interrupted batches' messages died with the process that held them: send the
            # running task's missing batches again (a batch counts once), then advance.
            for t in tasks:
                if t.status == "running":
                    resend_missing_batches(run_id, t.task)
            advance_daily_run.send(run_id=run_id)
            click.echo(f"resuming run #{run_id}")
        else:
            started = start_day(day, trigger="cli")
            if not started["started"]:
                click.echo(f"{day}: {started['reason']} (see `billingworker status`)")
                return
            run_id = started["run_id"]
            click.echo(f"run #{run_id} for {day} started")
        status, tasks = _watch(current.engine, run_id)
        broker.join("emails", fail_fast=False)
    except KeyboardInterrupt:
        worker.stop(timeout=30_000)
        _left_running(current.engine, run_id, "interrupted")
        raise SystemExit(INTERRUPTED) from None
    except click.ClickException:
        raise
    except Exception as exc:  # noqa: BLE001 - say where the run stands, then fail
        worker.stop(timeout=30_000)
        _left_running(current.engine, run_id, f"stopped by {type(exc).__name__}: {exc}")
        raise SystemExit(1) from None
    finally:
        # Stopping twice is harmless; every way out stops the worker threads.
        worker.stop(timeout=30_000)
    print_table(f"run #{run_id} for {day}: {status}", _TASK_COLUMNS, [_task_row(t) for t in tasks])
    if status != "succeeded":
        raise SystemExit(1)


def _watch(engine, run_id: int) -> tuple[str, list[TaskProgress]]:
    """Show each task's batches (done of total) until the run is no longer running."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    out = console()
    bars: dict[str, Any] = {}
    with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("batches {task.fields[state]}"), console=out, transient=False) as progress:
        while True:
            status, tasks = snapshot(engine, run_id)
            for t in tasks:
                if t.status == "pending":
                    continue
                if t.task not in bars:
                    bars[t.task] = progress.add_task(t.task, total=max(t.batches_total, 1), state=t.status)
                progress.update(bars[t.task], total=max(t.batches_total, 1),
                                completed=t.batches_done if t.batches_total else (1 if t.status == "done" else 0),
                                state=t.status)
            if status != "running":
                return status, tasks
            pause(POLL_SECONDS)


def _left_running(engine, run_id: int | None, why: str) -> None:
    """Tell the operator where a run stopped short stands, and who finishes it."""
    if run_id is None:
        click.echo(f"daily-run {why} before a run was started: nothing to resume", err=True)
        return
    try:
        status, tasks = snapshot(engine, run_id)
    except Exception as exc:  # noqa: BLE001 - the database may be what failed
        click.echo(f"run #{run_id} {why}; its state could not be read ({type(exc).__name__}). "
                   f"{_who_resumes(run_id)}", err=True)
        return
    if status != "running":
        click.echo(f"run #{run_id} {why}, after it ended: {status}", err=True)
        return
    print_table(f"run #{run_id} {why}: still running, with what it counted", _TASK_COLUMNS,
                [_task_row(t) for t in tasks], out=console(stderr=True))
    click.echo(f"Nothing it did is lost, and no batch is done twice. {_who_resumes(run_id)}", err=True)


def _who_resumes(run_id: int) -> str:
    return (f"The scheduler (`billingworker scheduler`) resumes run #{run_id} on the workers once it has "
            f"not moved for its --stall-seconds (60 s). Without a scheduler, finish it here with "
            f"`billingworker daily-run --resume {run_id}`, or on the workers with "
            f"`billingworker enqueue advance_daily_run run_id={run_id}`.")


_TASK_COLUMNS = ["task", "status", Column("batches", justify="right"), Column("clients", justify="right"),
                 Column("invoices", justify="right"), Column("credit applied", justify="right"),
                 Column("fees", justify="right"), Column("captures", justify="right"),
                 Column("emails", justify="right"), Column("failures", justify="right")]


def _task_row(t: TaskProgress) -> list[Any]:
    c = t.counts
    return [t.task, t.status, f"{t.batches_done}/{t.batches_total}", c["clients"], c["invoices_created"],
            c["credit_applied"], c["fees_added"], c["captures"], c["emails_queued"], c["failures"]]


# --- the dry run ------------------------------------------------------------------------------------

def dry_run_view(engine, day: date, report: dict) -> dict[str, Any]:
    """The dry run as plain data: per task its counts, its amounts per currency (from the preview
    lines and the client's or invoice's currency), its preview lines and its failing clients."""
    from sqlalchemy import select

    from ..db import unit_of_work
    from ..domain.models import Client, Currency, Invoice
    from ..domain.money import round_money
    from .runs import client_name

    client_ids = {line.get("client_id") for r in report.values() for line in r.preview}
    client_ids |= {f.client_id for r in report.values() for f in r.failures}
    invoice_ids = {line.get("invoice_id") for r in report.values() for line in r.preview}
    client_ids.discard(None)
    invoice_ids.discard(None)
    with unit_of_work(engine) as session:
        clients = {c.id: (client_name(c), code) for c, code in session.execute(
            select(Client, Currency.code).outerjoin(Currency, Currency.id == Client.currency_id)
            .where(Client.id.in_(client_ids))).all()} if client_ids else {}
        invoices = dict(session.execute(
            select(Invoice.id, Currency.code).outerjoin(Currency, Currency.id == Invoice.currency_id)
            .where(Invoice.id.in_(invoice_ids))).all()) if invoice_ids else {}
        minor_units = dict(session.execute(select(Currency.code, Currency.minor_units)).all())
    tasks = []
    for task, result in report.items():
        lines = []
        for line in result.preview:
            client_id, invoice_id = line.get("client_id"), line.get("invoice_id")
            name, client_currency = clients.get(client_id, ("", None))
            key = next((k for k in AMOUNT_KEYS if k in line), None)
            currency = invoices.get(invoice_id) or client_currency
            amount = line.get(key) if key else None
            if amount is not None and currency in minor_units:
                amount = str(round_money(Decimal(str(amount)), minor_units[currency]))
            # An invoice the preview itself created (rolled back since) is "new", not a number.
            invoice_id = invoice_id if invoice_id in invoices else None
            lines.append({"client_id": client_id, "client": name, "invoice_id": invoice_id,
                          "description": describe(task, line), "amount": amount, "currency": currency})
        amounts = totals_by_currency((line["currency"], line["amount"]) for line in lines if line["amount"] is not None)
        tasks.append({
            "task": task, "clients": result.clients, "invoices": result.invoices_created,
            "credit_applied": result.credit_applied, "fees": result.fees_added, "captures": result.captures,
            "emails": result.emails_queued, "failures_count": len(result.failures),
            "amounts": {code: str(amount) for code, amount in amounts.items()},
            "preview": lines,
            "failures": [{"client_id": f.client_id, "client": clients.get(f.client_id, ("", None))[0],
                          "field": f.field, "reason": f.message} for f in result.failures],
        })
    return {"day": day.isoformat(), "tasks": tasks}


def describe(task: str, line: dict) -> str:
    """A preview line in words (the keys each task's preview has today)."""
    if "due" in line:
        count = line.get("lines", "?")
        return f"new invoice due {line['due']}, {count} line{'' if count == 1 else 's'} ({line.get('status', '')})"
    if "credit" in line:
        return "credit applied"
    if "fee" in line and "period" in line:
        return f"interest for {line['period']} (invoice total then {line.get('total')})"
    if "fee" in line:
        return f"late fee (invoice total then {line.get('total')}, balance due {line.get('balance_due')})"
    if "stage" in line:
        skipped = f", skipping {', '.join(line['skipped'])}" if line.get("skipped") else ""
        return f"{line['stage']} reminder{skipped}"
    if "outcome" in line:
        return f"card capture: {line['outcome']}"
    return ", ".join(f"{k} {v}" for k, v in line.items() if k not in ("client_id", "invoice_id"))


def render_dry_run(view: dict[str, Any]) -> None:
    tasks = view["tasks"]
    print_table(f"Dry run of {view['day']}: nothing was written", [
        "task", Column("clients", justify="right"), Column("invoices", justify="right"),
        Column("credit applied", justify="right"), Column("fees", justify="right"),
        Column("captures", justify="right"), Column("emails", justify="right"),
        Column("failures", justify="right"), "amounts"],
        [[t["task"], t["clients"], t["invoices"], t["credit_applied"], t["fees"], t["captures"], t["emails"],
          t["failures_count"], money_by_currency(t["amounts"].items())] for t in tasks])
    rows = []
    hidden = 0
    for t in tasks:
        for line in t["preview"][:PREVIEW_LINES]:
            rows.append([t["task"], _client(line), f"#{line['invoice_id']}" if line["invoice_id"] else "new",
                         line["description"], line["amount"], line["currency"]])
        hidden += max(0, len(t["preview"]) - PREVIEW_LINES)
    click.echo("")
    if rows:
        print_table("What it would do", ["task", "client", "invoice", "description",
                                         Column("amount", justify="right"), "currency"], rows)
        if hidden:
            click.echo(f"({hidden} more lines: --json lists them all)")
    else:
        click.echo("What it would do: nothing")
    failing = [[t["task"], _client(f), f["reason"]] for t in tasks for f in t["failures"]]
    if failing:
        click.echo("")
        print_table("Clients it would fail on", ["task", "client", "reason"], failing)


def _client(row: dict) -> str:
    if row.get("client_id") is None:
        return "-"
    return f"{row['client_id']} {row['client']}".strip()
