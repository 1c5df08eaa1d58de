"""``billingworker mass-update``: the preview of a mass update against real rows (SQLite and
PostgreSQL), the command that runs it, and the job enqueued after a yes."""

from __future__ import annotations

import json
import shlex
from datetime import date
from decimal import Decimal

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billingworker.bootstrap import current_app
from billingworker.cli import main
from billingworker.domain.models import Base, Service
from billingworker.ops.enqueue_check import parse_assignments
from tests import factories as f

from .conftest import cli


def run(engine, *args: str, input: str | None = None):
    return cli(engine, "mass-update", *args, broker_url="stub://", input=input)


def row_counts(engine) -> dict[str, int]:
    with Session(engine) as session:
        return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


@pytest.fixture
def hosting(engine) -> tuple[int, int, int]:
    """A client with a 60.00 monthly service and a 3.00 addon, both due 1 Feb 2026."""
    with Session(engine) as session:
        c = f.client(session)
        svc = f.service(session, c, next_due_date=date(2026, 2, 1), amount=Decimal("60.00"))
        add = f.addon(session, svc, next_due_date=date(2026, 2, 1), amount=Decimal("3.00"), taxed=False)
        session.commit()
        return c.id, svc.id, add.id


@pytest.fixture
def sent(monkeypatch) -> list:
    """The messages the command sends, instead of the broker."""
    messages: list = []
    monkeypatch.setattr(current_app().broker, "enqueue",
                        lambda message, *, delay=None: messages.append(message) or message)
    return messages


def test_the_preview_shows_changes_lines_and_invoice_and_writes_nothing(engine, hosting, sent):
    # Given a client's service and addon, and every table's row count
    client_id, svc, add = hosting
    before = row_counts(engine)
    # When the operator previews moving both to 6 Feb with a prorata invoice
    result = run(engine, str(client_id), "--item", f"service:{svc},addon:{add}", "--set", "next_due_date=2026-02-06",
                 "--set", "status=Suspended", "--prorata", "--preview")
    # Then the tables say what would change and what would be invoiced, per currency
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"Mass update of client {client_id}" in out and "nothing written" in out
    assert "next_due_date" in out and "2026-02-01" in out and "2026-02-06" in out and "Suspended" in out
    assert "Prorata: Shared Hosting - example.com (2026-02-01 - 2026-02-05, 5 days)" in out
    assert "Prorata total: USD 10.50" in out
    assert "Prorata invoice" in out and "USD 10.50" in out
    # and nothing was written or sent
    assert row_counts(engine) == before and sent == []
    with Session(engine) as session:
        assert session.get(Service, svc).next_due_date == date(2026, 2, 1)


def test_the_preview_prints_the_exact_enqueue_command(engine, hosting, sent):
    client_id, svc, _ = hosting
    result = run(engine, str(client_id), "--item", f"service:{svc}", "--set", "next_due_date=2026-02-06",
                 "--prorata", "--no-email", "--preview")
    assert result.exit_code == 0, result.output
    command = result.output.strip().splitlines()[-1].strip()
    words = shlex.split(command)
    assert words[:3] == ["billingworker", "enqueue", "mass_update"]
    # The command's arguments are the job's, as `billingworker enqueue` reads them
    kwargs = parse_assignments(words[3:])
    assert kwargs.pop("request_id").startswith("cli-")
    assert kwargs == {"client_id": client_id, "items": [{"type": "service", "id": svc}],
                      "changes": {"next_due_date": "2026-02-06"}, "create_prorata_invoice": True,
                      "send_email": False}
    # and that command is accepted by `billingworker enqueue`
    enqueued = CliRunner().invoke(main, words[1:], catch_exceptions=False)
    assert enqueued.exit_code == 0, enqueued.output
    assert [m.kwargs["changes"] for m in sent] == [{"next_due_date": "2026-02-06"}]


def test_the_preview_as_json(engine, hosting, sent):
    client_id, svc, _ = hosting
    result = run(engine, str(client_id), "--item", f"service:{svc}", "--set", "next_due_date=2026-02-06",
                 "--set", "module_command=suspend", "--prorata", "--preview", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["preview"]["prorata_total"] == "10.00" and data["preview"]["currency"] == "USD"
    assert data["preview"]["invoice"]["total"] == "10.00"
    assert data["preview"]["module_commands"] == [{"type": "service", "id": svc, "command": "suspend"}]
    assert data["enqueue"].startswith("billingworker enqueue mass_update ") and "message_id" not in data
    assert sent == []


def test_after_a_yes_the_job_is_enqueued_with_the_same_arguments(engine, hosting, sent):
    # Given a preview the operator answers "y" to
    client_id, svc, _ = hosting
    before = row_counts(engine)
    result = run(engine, str(client_id), "--item", f"service:{svc}", "--set", "recurring_amount=12.00", input="y\n")
    # Then one mass_update message with the arguments of the preview is sent; the worker does the update
    assert result.exit_code == 0, result.output
    assert "Enqueue this mass update?" in result.output and "enqueued mass_update as message" in result.output
    [message] = sent
    assert message.actor_name == "mass_update"
    assert {k: v for k, v in message.kwargs.items() if k != "request_id"} == {
        "client_id": client_id, "items": [{"type": "service", "id": svc}], "changes": {"recurring_amount": "12.00"}}
    assert row_counts(engine) == before


def test_a_no_sends_nothing(engine, hosting, sent):
    client_id, svc, _ = hosting
    result = run(engine, str(client_id), "--item", f"service:{svc}", "--set", "status=Suspended", input="n\n")
    assert result.exit_code == 1 and "Aborted" in result.output
    assert sent == []


@pytest.mark.parametrize(("args", "said"), [
    (["--item", "service:999", "--set", "status=Active"], "items[0].id: 999"),
    (["--item", "service", "--set", "status=Active"], "--item: 'service' is not TYPE:ID"),
    (["--item", "billable:{svc}", "--set", "status=Active"], "items[0].type"),
    (["--item", "service:{svc}", "--set", "colour=red"], "changes.colour"),
    (["--item", "service:{svc}", "--set", "recurring_amount=1.005"], "changes.recurring_amount"),
    (["--item", "service:{svc}", "--set", "status"], "'status' is not NAME=VALUE"),
])
def test_bad_input_is_refused_as_the_job_refuses_it_and_nothing_is_sent(engine, hosting, sent, args, said):
    client_id, svc, _ = hosting
    before = row_counts(engine)
    result = run(engine, str(client_id), *(a.format(svc=svc) for a in args), "--yes")
    assert result.exit_code == 2, result.output
    assert said in result.output and "nothing was done" in result.output
    assert sent == [] and row_counts(engine) == before


def test_json_without_preview_needs_yes(engine, hosting, sent):
    client_id, svc, _ = hosting
    result = run(engine, str(client_id), "--item", f"service:{svc}", "--set", "status=Suspended", "--json")
    assert result.exit_code == 2 and "add --yes" in result.output
    assert sent == []
