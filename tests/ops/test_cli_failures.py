"""``billingworker failures`` and ``billingworker unpark`` against databases holding the rows they
show (SQLite and PostgreSQL): the rows are read inside the session (no DetachedInstanceError),
shown as a table with the client's name, and as plain JSON."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from billingworker.db import unit_of_work
from billingworker.domain.models import Client, JobFailure

from .conftest import add_parked_client, add_run, cli


def _failures(engine) -> dict[str, int]:
    """Two clients, a run, and three failures: two of the run (one per client), one refusal."""
    run_id = add_run(engine)
    with unit_of_work(engine) as session:
        ada = Client(first_name="Ada", last_name="Lovelace", company_name="Analytical Ltd", email="ada@example.com")
        tim = Client(first_name="Tim", last_name="Berners-Lee", email="tim@example.com")
        session.add_all([ada, tim])
        session.flush()
        at = datetime(2026, 1, 10, 9, 2, 3, tzinfo=UTC)
        session.add_all([
            JobFailure(actor="generate_due_invoices", message_id="msg-gen-1", client_id=ada.id, error="Failed",
                       field="currency_id", reason="currency_id: None is required to invoice", created_at=at,
                       run_id=run_id),
            JobFailure(actor="capture_due_payments", message_id="msg-cap-1", client_id=tim.id, error="Failed",
                       field="pay_method.gateway_name", reason="card [declined] by the bank", created_at=at,
                       run_id=run_id),
            JobFailure(actor="apply_payment", message_id="msg-pay-1", client_id=None, error="ValidationError",
                       field="invoice_id", reason="invoice_id: 'abc' must be a positive integer id", created_at=at),
        ])
        session.commit()
        return {"run": run_id, "ada": ada.id, "tim": tim.id}


def test_failures_shows_each_row_with_the_client_name_run_field_and_message(engine):
    # Given failures of a daily run and a refused message
    ids = _failures(engine)

    # When the operator lists them
    result = cli(engine, "failures")

    # Then each is a row of the table, newest first, with the client's id and name
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "Failures (newest 3)" in lines[0]
    assert lines[1].split() == ["time", "(UTC)", "actor", "client", "run", "field", "reason", "message", "id"]
    # (a long reason is folded onto the next lines of its row: each row starts with its time)
    starts = [line for line in lines[2:] if line.startswith("2026-")]
    assert len(starts) == 3
    pay, cap, gen = starts
    assert "apply_payment" in pay and "invoice_id" in pay and "msg-pay-1" in pay and f"#{ids['run']}" not in pay
    assert f"{ids['tim']} Tim Berners-Lee" in cap and "msg-cap-1" in cap
    assert f"{ids['ada']} Analytical Ltd (Ada Lovelace)" in gen and f"#{ids['run']}" in gen
    assert "2026-01-10 09:02:03" in gen and "msg-gen-1" in gen and "currency_id" in gen
    # markup-looking text is printed as it is
    assert "card [declined] by the bank" in " ".join(result.output.split())


def test_failures_json_is_plain_json_with_every_field(engine):
    ids = _failures(engine)

    result = cli(engine, "failures", "--json")

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["message_id"] for r in rows] == ["msg-pay-1", "msg-cap-1", "msg-gen-1"]
    assert rows[2] == {"id": rows[2]["id"], "created_at": "2026-01-10T09:02:03+00:00",
                       "actor": "generate_due_invoices", "client_id": ids["ada"],
                       "client_name": "Analytical Ltd (Ada Lovelace)", "run_id": ids["run"], "field": "currency_id",
                       "error": "Failed", "reason": "currency_id: None is required to invoice",
                       "message_id": "msg-gen-1"}
    assert rows[0]["client_id"] is None and rows[0]["client_name"] == ""


def test_failures_filters_by_client_run_and_limit(engine):
    ids = _failures(engine)

    by_client = json.loads(cli(engine, "failures", "--json", "--client", str(ids["tim"])).stdout)
    by_run = json.loads(cli(engine, "failures", "--json", "--run", str(ids["run"])).stdout)
    limited = json.loads(cli(engine, "failures", "--json", "--limit", "1").stdout)
    none = cli(engine, "failures", "--client", "999999")

    assert [r["message_id"] for r in by_client] == ["msg-cap-1"]
    assert [r["message_id"] for r in by_run] == ["msg-cap-1", "msg-gen-1"]
    assert [r["message_id"] for r in limited] == ["msg-pay-1"]
    assert none.exit_code == 0 and none.output.strip() == "no failures recorded for these filters"


def test_failures_of_a_deleted_client_still_show(engine):
    # Given a failure whose client was deleted since (job_failures has no foreign key)
    with unit_of_work(engine) as session:
        session.add(JobFailure(actor="close_client", message_id="m-gone", client_id=4242, error="NotFound",
                               reason="client_id: 4242 does not match any client", created_at=datetime.now(UTC)))
        session.commit()

    result = cli(engine, "failures")

    assert result.exit_code == 0, result.output
    assert "4242" in result.output and "m-gone" in result.output


def test_failures_on_an_empty_table_says_so(engine):
    result = cli(engine, "failures")
    assert result.exit_code == 0 and result.output.strip() == "no failures recorded"
    assert json.loads(cli(engine, "failures", "--json").stdout) == []


# --- unpark -------------------------------------------------------------------------------------

def test_unpark_lets_a_parked_client_be_billed_again(engine):
    client_id = add_parked_client(engine)

    result = cli(engine, "unpark", str(client_id))

    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"client {client_id} unparked: the next daily run processes it again"
    with unit_of_work(engine) as session:
        client = session.get(Client, client_id)
        assert (client.parked_at, client.parked_reason, client.failure_count) == (None, "", 0)


def test_unpark_of_a_client_that_is_not_parked_says_so(engine):
    client_id = add_parked_client(engine)
    cli(engine, "unpark", str(client_id))

    again = cli(engine, "unpark", str(client_id))

    assert again.exit_code == 0
    assert again.output.strip() == f"client {client_id} was not parked: nothing to do"


def test_unpark_of_an_unknown_client_is_an_error(engine):
    result = cli(engine, "unpark", "987654")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: client 987654 does not exist"
