"""``billingworker statement`` and ``billingworker summary`` against a real database."""

from __future__ import annotations

import csv
import io
import json
from datetime import date

import pytest
from sqlalchemy.orm import Session

from billingworker.domain.models import EmailLog
from tests import factories as f
from tests.factories import statement_at as at
from tests.factories import statement_credit as credit
from tests.factories import statement_invoice as invoice
from tests.factories import statement_txn as txn

from .conftest import cli


def run(engine, *args: str):
    return cli(engine, *args, broker_url="stub://")


@pytest.fixture
def client_id(engine) -> int:
    with Session(engine) as session:
        c = f.client(session, first_name="Grace", last_name="Hopper", company_name="Navy")
        invoice(session, c, 1, date(2025, 12, 20), "100.00")
        txn(session, c, at(date(2025, 12, 21)), money_in="100.00", fees="2.00", description="Invoice Payment #1")
        invoice(session, c, 2, date(2026, 1, 1), "1234.56", status="Unpaid")
        credit(session, c, date(2026, 1, 31), "34.56", "Goodwill")
        session.add(EmailLog(client_id=c.id, template="invoice_created", subject="Invoice #2", body_text="",
                             to_address="grace@example.com", sent_at=at(date(2026, 1, 1))))
        session.commit()
        return c.id


def test_statement_as_a_table_in_the_clients_currency(engine, client_id):
    result = run(engine, "statement", str(client_id), "--from", "2026-01-01", "--to", "2026-01-31")
    assert result.exit_code == 0, result.output
    assert "Grace Hopper (Navy)" in result.output
    assert "Opening Balance" in result.output and "$0.00 USD" in result.output
    assert "$1,234.56 USD" in result.output and "-$1,234.56 USD" in result.output
    assert result.output.strip().splitlines()[-1].endswith("-$1,200.00 USD")


def test_statement_as_json_with_string_amounts(engine, client_id):
    result = run(engine, "statement", str(client_id), "--from", "2025-12-21", "--to", "2026-01-31",
                 "--format", "json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["opening_balance"] == "-100.00" and data["closing_balance"] == "-1200.00"
    assert [(r["type"], r["credit"], r["debit"], r["balance"]) for r in data["rows"]] == [
        ("Payment", "100.00", "0.00", "0.00"), ("Invoice", "0.00", "1234.56", "-1234.56"),
        ("Credit", "34.56", "0.00", "-1200.00")]


def test_statement_as_csv(engine, client_id):
    result = run(engine, "statement", str(client_id), "--from", "2026-01-01", "--to", "2026-01-31", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.reader(io.StringIO(result.output)))
    assert rows[0] == ["type", "date", "description", "credit", "debit", "balance"]
    assert rows[1] == ["Opening Balance", "2026-01-01", "", "", "", "0.00"]
    assert rows[2] == ["Invoice", "2026-01-01", "Invoice #2", "0.00", "1234.56", "-1234.56"]
    assert rows[-1] == ["Closing Balance", "2026-01-31", "", "34.56", "1234.56", "-1200.00"]


def test_summary_as_json_and_as_text(engine, client_id):
    result = run(engine, "summary", str(client_id), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["invoices"]["Unpaid"] == {"count": 1, "amount": "1234.56"}
    assert data["income"]["gross_revenue"] == "100.00" and data["income"]["net_income"] == "98.00"
    assert data["income"]["credit_balance"] == "0.00"
    assert [e["subject"] for e in data["recent_emails"]] == ["Invoice #2"]
    assert data["recent_emails"][0]["sent_at"].endswith("+00:00"), "UTC on every database (MariaDB's is naive)"
    text = run(engine, "summary", str(client_id))
    assert text.exit_code == 0, text.output
    assert "Unpaid (due)" in text.output and "$1,234.56 USD" in text.output and "Invoice #2" in text.output
    assert "Recent emails (UTC)" in text.output


@pytest.mark.parametrize("command", [
    ["statement", "424242", "--from", "2026-01-01", "--to", "2026-01-31"],
    ["summary", "424242"],
    ["summary", "424242", "--json"],
])
def test_an_unknown_client_is_a_clear_error(engine, command):
    result = run(engine, *command)
    assert result.exit_code != 0
    assert "client_id: 424242 does not match any client" in result.output


def test_a_range_that_ends_before_it_starts_is_an_error(engine, client_id):
    result = run(engine, "statement", str(client_id), "--from", "2026-02-01", "--to", "2026-01-01")
    assert result.exit_code != 0 and "is after to" in result.output


def test_a_malformed_date_is_a_usage_error(engine, client_id):
    result = run(engine, "statement", str(client_id), "--from", "01/02/2026")
    assert result.exit_code == 2
