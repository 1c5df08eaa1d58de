"""``billingworker reconcile`` against real rows, and the books gauge of the metrics exporter."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from sqlalchemy import update
from sqlalchemy.orm import Session

from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.models import Client, DailyRun, OutboxEmail
from billingworker.domain.reports.reconciliation import reconcile, record_reconciliation
from billingworker.ops.metrics import OpsCollector, make_registry
from tests import factories as f

from .conftest import cli

DAY = date(2026, 1, 10)


def run(engine, *args: str):
    return cli(engine, "reconcile", *args, broker_url="stub://")


def billed_books(engine) -> dict[str, int]:
    """Two clients billed on DAY by the real generation; returns their ids."""
    with Session(engine) as session:
        a, b = f.client(session), f.client(session)
        f.service(session, a, next_due_date=DAY + timedelta(days=3))
        f.service(session, b, next_due_date=DAY - timedelta(days=2))
        session.commit()
        generate_for_clients(session, [a.id, b.id], DAY, queue_email=False)
        session.commit()
        return {"a": a.id, "b": b.id}


def test_clean_books_exit_0_with_every_check_ok(engine):
    # Given books the billing code wrote
    billed_books(engine)

    # When an operator reconciles the day
    result = run(engine, "--as-of", DAY.isoformat())

    # Then exit 0, a summary row per check, and the verdict
    assert result.exit_code == 0, result.output
    assert "Reconciliation of the books as of 2026-01-10" in result.output
    for check in ("due_billed", "periods_once", "numbers_gap_free", "paid_moved_due_dates", "credit_matches_history",
                  "emails_settled", "totals_add_up"):
        assert any(line.startswith(check) and " ok " in line for line in result.output.splitlines()), check
    assert result.output.strip().endswith("books clean")


def test_findings_exit_1_and_name_their_rows(engine):
    # Given the books, one client's balance changed without history, and three emails stuck for a day
    ids = billed_books(engine)
    with Session(engine) as session:
        session.execute(update(Client).where(Client.id == ids["b"]).values(credit_balance=Decimal("9.99")))
        old = datetime.now(UTC) - timedelta(days=1)
        stuck = [OutboxEmail(client_id=ids["a"], template="invoice_created", created_at=old) for _ in range(3)]
        session.add_all(stuck)
        session.commit()
        stuck_ids = [e.id for e in stuck]

    # When reconciled, as a table capped at one finding per check, and as JSON
    table = run(engine, "--as-of", DAY.isoformat(), "--limit", "1")
    as_json = run(engine, "--as-of", DAY.isoformat(), "--json")

    # Then exit 1 both ways; the table names the client and the emails, the JSON every row
    assert table.exit_code == 1, table.output
    lines = table.output.splitlines()
    assert any(line.startswith("credit_matches_history") and "FAIL" in line for line in lines)
    assert any(line.startswith("clients") and str(ids["b"]) in line and "9.99" in line for line in lines)
    assert any(line.startswith("email_outbox") and ", ".join(map(str, stuck_ids)) in line for line in lines)
    assert "books NOT clean: 2 finding(s) to look at" in table.output
    assert as_json.exit_code == 1
    data = json.loads(as_json.output)
    assert data["clean"] is False
    assert {(x["check"], x["table"], tuple(x["ids"])) for x in data["findings"]} == {
        ("credit_matches_history", "clients", (ids["b"],)), ("emails_settled", "email_outbox", tuple(stuck_ids))}


def test_the_table_caps_the_findings_of_a_check(engine):
    # Given three clients whose balances have no history
    with Session(engine) as session:
        clients = [f.client(session, credit_balance=Decimal("1.00")) for _ in range(3)]
        session.commit()
        first = clients[0].id

    # When shown with --limit 1
    result = run(engine, "--as-of", DAY.isoformat(), "--limit", "1")

    # Then one finding is shown and the other two are counted
    assert result.exit_code == 1
    assert "and 2 more" in result.output
    assert any(line.startswith("clients") and str(first) in line for line in result.output.splitlines())


def test_a_day_to_come_or_a_bad_day_is_refused(engine):
    future = run(engine, "--as-of", "2999-01-01")
    bad = run(engine, "--as-of", "yesterday")

    assert future.exit_code == 2 and "--as-of: 2999-01-01 is after today" in future.output
    assert bad.exit_code == 2 and "--as-of: 'yesterday' is not a day" in bad.output


def test_an_unmigrated_database_is_exit_3(tmp_path):
    result = cli(None, "reconcile", database_url=f"sqlite:///{tmp_path / 'empty.sqlite3'}", broker_url="stub://")

    assert result.exit_code == 3
    assert "billingworker db upgrade" in result.output


def test_the_gauge_says_whether_the_last_run_found_the_books_clean(engine):
    # Given two runs, each with its reconciliation recorded: the older clean, the last not
    ids = billed_books(engine)
    now = datetime(2026, 1, 11, 9, 30, tzinfo=UTC)
    with Session(engine) as session:
        older = DailyRun(run_date=DAY, status="succeeded", trigger="test", started_at=now - timedelta(days=1))
        last = DailyRun(run_date=DAY + timedelta(days=1), status="succeeded", trigger="test", started_at=now)
        session.add_all([older, last])
        session.flush()
        record_reconciliation(session, older.id, reconcile(session, DAY, now=now - timedelta(days=1)))
        session.execute(update(Client).where(Client.id == ids["a"]).values(credit_balance=Decimal("2.00")))
        record_reconciliation(session, last.id, reconcile(session, DAY + timedelta(days=1), now=now))
        session.commit()

    # When the exporter is scraped
    registry = make_registry(OpsCollector("stub://", engine=engine))
    value = registry.get_sample_value

    # Then the last run's books are not clean, and the check that found it says how many
    assert value("billingworker_books_clean") == 0
    assert value("billingworker_reconciliation_findings", {"check": "credit_matches_history"}) == 1
    assert value("billingworker_reconciliation_findings", {"check": "due_billed"}) == 0
    assert value("billingworker_reconciliation_timestamp_seconds") == now.timestamp()


def test_no_gauge_before_any_reconciliation_was_recorded(engine):
    registry = make_registry(OpsCollector("stub://", engine=engine))

    assert registry.get_sample_value("billingworker_books_clean") is None
    assert registry.get_sample_value("billingworker_ops_source_up", {"source": "database"}) == 1
