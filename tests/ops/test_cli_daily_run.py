"""``billingworker daily-run`` in the foreground and ``--dry-run``, on the demo clients (GBP, USD,
EUR and a client without a currency) in SQLite and PostgreSQL: the progress and the final
table, amounts per currency, the failing client, ``--as-of`` in the future, and a run stopped
short (Ctrl-C): what the command says, and the two ways it is finished (the scheduler, --resume).
"""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from dramatiq import Worker
from sqlalchemy import func, select

from billingworker import runtime as rt
from billingworker.actors import broker
from billingworker.clock import SystemClock
from billingworker.db import session_factory, unit_of_work
from billingworker.demo import seed_demo
from billingworker.domain.models import DailyRun, Invoice
from billingworker.ops import daily_cli
from billingworker.scheduler import Scheduler

from .conftest import cli


@pytest.fixture
def demo(engine):
    """The demo company, due dates around the installation's today; the in-process broker empty."""
    rt.reset()
    broker.flush_all()
    today = SystemClock().today()
    with session_factory(engine)() as session:
        seed_demo(session, today)
    yield today
    broker.flush_all()
    rt.reset()


def runs(engine) -> list[tuple[int, str]]:
    with unit_of_work(engine) as session:
        return [tuple(r) for r in session.execute(select(DailyRun.id, DailyRun.status).order_by(DailyRun.id)).all()]


def invoices(engine) -> int:
    with unit_of_work(engine) as session:
        return session.scalar(select(func.count()).select_from(Invoice))


def test_dry_run_shows_counts_amounts_per_currency_lines_and_failing_clients(engine, demo):
    result = cli(engine, "daily-run", "--dry-run")

    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Dry run of {demo}: nothing was written" in out
    generate = next(line for line in out.splitlines() if line.startswith("generate_due_invoices "))
    # 10 clients billed, 11 invoices (one client has separate invoices), one failure; amounts never added across
    assert generate.split()[1:8] == ["10", "11", "0", "0", "0", "11", "1"]  # the emails it would queue too
    assert "EUR 336.26, GBP 67.77, USD 156.77" in generate
    # the preview as a table: client, invoice, description, amount, currency
    ada = next(line for line in out.splitlines() if " 1 Ada Lovelace " in line)
    assert "new invoice due" in ada and "29.39" in ada and ada.rstrip().endswith("GBP")
    # the failing client with its name and reason
    assert "Clients it would fail on" in out
    radia = next(line for line in out.splitlines() if "Radia Perlman" in line and "currency" in line)
    assert "generate_due_invoices" in radia and "the client has no currency" in radia
    assert "{" not in out, "no raw dicts"
    assert runs(engine) == [] and invoices(engine) == 0


def test_dry_run_json_is_plain_json_with_amounts_per_currency(engine, demo):
    result = cli(engine, "daily-run", "--dry-run", "--json")

    assert result.exit_code == 0, result.output
    view = json.loads(result.stdout)
    generate = view["tasks"][0]
    assert (view["day"], generate["task"]) == (demo.isoformat(), "generate_due_invoices")
    assert generate["amounts"] == {"EUR": "336.26", "GBP": "67.77", "USD": "156.77"}
    assert {(line["client"], line["currency"]) for line in generate["preview"]} >= {("Ada Lovelace", "GBP"),
                                                                                    ("Konrad Zuse", "EUR")}
    assert [(f["client"], f["field"]) for f in generate["failures"]] == [("Radia Perlman", "currency_id")]


def test_a_future_day_is_refused_naming_as_of_unless_it_is_a_dry_run(engine, demo):
    tomorrow = (demo + timedelta(days=1)).isoformat()

    real = cli(engine, "daily-run", "--as-of", tomorrow)
    queued = cli(engine, "enqueue", "daily-run", "--as-of", tomorrow)
    preview = cli(engine, "daily-run", "--as-of", tomorrow, "--dry-run")
    bad = cli(engine, "daily-run", "--as-of", "2026-02-30")

    for refused in (real, queued):
        assert refused.exit_code == 2
        assert f"Error: --as-of: {tomorrow} is after today ({demo} in UTC)" in refused.output
    assert "nothing was enqueued" in queued.output
    assert preview.exit_code == 0 and f"Dry run of {tomorrow}" in preview.output
    assert bad.exit_code == 2 and "--as-of: '2026-02-30' is not a valid ISO date" in bad.output
    assert runs(engine) == []


def test_the_foreground_run_shows_progress_and_a_table_per_task(engine, demo):
    result = cli(engine, "daily-run", "--threads", "2")

    assert result.exit_code == 0, result.output
    (run_id, status), = runs(engine)
    assert status == "succeeded"
    out = result.output
    assert f"run #{run_id} for {demo} started" in out
    assert "batches done" in out  # the progress bars
    table = out[out.index(f"run #{run_id} for {demo}: succeeded"):].splitlines()
    generate = next(line for line in table if line.startswith("generate_due_invoices"))
    assert generate.split()[1:] == ["done", "1/1", "10", "11", "0", "0", "0", "11", "1"]
    assert invoices(engine) == 11

    again = cli(engine, "daily-run")
    assert again.exit_code == 0 and f"{demo}: the day already has a run" in again.output


class _IdleWorker:
    """A worker that takes nothing: the run cannot move before the operator's Ctrl-C."""

    def __init__(self, *_args, **_kwargs) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self, timeout: int = 0) -> None:
        pass


def _interrupt(monkeypatch) -> None:
    def ctrl_c(_seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(daily_cli, "pause", ctrl_c)
    monkeypatch.setattr("dramatiq.Worker", _IdleWorker)


def _interrupted_run(engine, monkeypatch) -> tuple[int, str]:
    with monkeypatch.context() as patch:
        _interrupt(patch)
        result = cli(engine, "daily-run")
    broker.flush_all()  # the process is gone, and its in-process messages with it
    (run_id, status), = runs(engine)
    return run_id, result


def test_an_interrupted_run_says_it_is_still_running_and_who_resumes_it(engine, demo, monkeypatch):
    run_id, result = _interrupted_run(engine, monkeypatch)

    assert result.exit_code == daily_cli.INTERRUPTED
    assert runs(engine) == [(run_id, "running")]
    said = " ".join(result.output.split())
    assert f"run #{run_id} interrupted: still running, with what it counted" in said
    assert "Nothing it did is lost, and no batch is done twice." in said
    assert f"The scheduler (`billingworker scheduler`) resumes run #{run_id} on the workers" in said
    assert f"`billingworker daily-run --resume {run_id}`" in said
    assert f"`billingworker enqueue advance_daily_run run_id={run_id}`" in said


def test_the_scheduler_resumes_an_interrupted_run_as_the_command_says(engine, demo, monkeypatch):
    run_id, _ = _interrupted_run(engine, monkeypatch)
    rt.configure(engine=engine)
    worker = Worker(broker, worker_timeout=50, worker_threads=2)
    worker.start()
    try:
        decisions = Scheduler(engine, rt.runtime().clock, stall_seconds=0).tick()
        for _ in range(5):
            broker.join("billing", fail_fast=False)
            broker.join("emails", fail_fast=False)
    finally:
        worker.stop()

    assert f"resumed stalled run #{run_id}" in decisions
    assert runs(engine) == [(run_id, "succeeded")]
    assert invoices(engine) == 11


def test_resume_finishes_an_interrupted_run_in_the_foreground(engine, demo, monkeypatch):
    run_id, _ = _interrupted_run(engine, monkeypatch)

    result = cli(engine, "daily-run", "--resume", str(run_id))

    assert result.exit_code == 0, result.output
    assert f"resuming run #{run_id}" in result.output and f"run #{run_id} for {demo}: succeeded" in result.output
    assert runs(engine) == [(run_id, "succeeded")]
    assert invoices(engine) == 11
    done = cli(engine, "daily-run", "--resume", str(run_id))
    assert done.exit_code == 1 and f"run #{run_id} is succeeded: there is nothing to resume" in done.output


def test_the_dry_run_table_chains_the_tasks_and_shows_what_each_line_costs(engine):
    from decimal import Decimal

    from billingworker.domain.billing.due_invoices import generate_for_clients
    from billingworker.domain.settings import save_settings
    from tests import factories as f

    # Given an invoice 20 days overdue (a 5.00 late fee is due), and a card client whose invoice
    # is created today and due today (created and captured by the same run)
    rt.reset()
    today = SystemClock().today()
    with session_factory(engine)() as session:
        save_settings(session, late_fee_days=3, late_fee_amount="5.00", late_fee_type="fixed")
        late = f.client(session, first_name="Grace", last_name="Hopper")
        f.service(session, late, next_due_date=today - timedelta(days=20), amount=Decimal("20.00"))
        card = f.client(session, first_name="Alan", last_name="Turing", auto_cc_processing=True)
        f.card(session, card)
        f.service(session, card, next_due_date=today, amount=Decimal("30.00"), payment_method="testgateway")
        session.commit()
        generate_for_clients(session, [late.id], today - timedelta(days=30))
        session.commit()

    # When the day is previewed
    result = cli(engine, "daily-run", "--dry-run")

    # Then the capture of the invoice the same run creates is in it, and the fee line costs the fee
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    capture = next(line for line in lines if line.startswith("capture_due_payments ") and "Alan Turing" in line)
    assert "new" in capture and "card capture: succeeded" in capture and "30.00" in capture
    fee = next(line for line in lines if line.startswith("apply_late_fees ") and "Grace Hopper" in line)
    assert fee.split()[-2:] == ["5.00", "USD"]
    assert next(line for line in lines if line.startswith("apply_late_fees ")).rstrip().endswith("USD 5.00")
    assert invoices(engine) == 1 and runs(engine) == []
    rt.reset()
