"""``billingworker enqueue``: arguments become the job's JSON keyword arguments."""

from __future__ import annotations

from click.testing import CliRunner

from billingworker.actors import broker
from billingworker.cli import main


def test_enqueue_sends_json_arguments_and_money_as_strings(monkeypatch):
    sent = []
    monkeypatch.setattr(broker, "enqueue", lambda message, *, delay=None: sent.append(message) or message)

    result = CliRunner().invoke(main, [
        "enqueue", "mass_update", "client_id=12", 'items=[{"type": "service", "id": 7}]',
        'changes={"recurring_amount": "9.99"}', "create_prorata_invoice=true", "note=plain words"])
    money = CliRunner().invoke(main, ["enqueue", "adjust_credit", "client_id=12", "amount=-5.00",
                                      "description=Goodwill"])

    assert result.exit_code == 0, result.output
    assert money.exit_code == 0, money.output
    assert sent[0].actor_name == "mass_update"
    assert sent[0].kwargs == {"client_id": 12, "items": [{"type": "service", "id": 7}],
                              "changes": {"recurring_amount": "9.99"}, "create_prorata_invoice": True,
                              "note": "plain words"}
    assert sent[1].kwargs == {"client_id": 12, "amount": "-5.00", "description": "Goodwill"}


def test_enqueue_refuses_an_unknown_job():
    result = CliRunner().invoke(main, ["enqueue", "bill_everyone_twice"])
    assert result.exit_code != 0 and "is not a job" in result.output
