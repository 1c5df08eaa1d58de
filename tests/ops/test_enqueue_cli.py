"""``billingworker enqueue``: arguments become the job's JSON keyword arguments; what the job
would refuse at once is refused before anything is sent."""

from __future__ import annotations

import functools

import dramatiq
import pytest
from click.testing import CliRunner
from dramatiq.brokers.stub import StubBroker

from billingworker.actors import arguments as rules
from billingworker.actors import broker
from billingworker.cli import main
from billingworker.ops.enqueue_check import MessageRefused, check_message


def test_enqueue_sends_json_arguments_and_money_as_strings(monkeypatch):
    sent = []
    monkeypatch.setattr(broker, "enqueue", lambda message, *, delay=None: sent.append(message) or message)

    result = CliRunner().invoke(main, [
        "enqueue", "mass_update", "client_id=12", 'items=[{"type": "service", "id": 7}]',
        'changes={"recurring_amount": "9.99"}', "create_prorata_invoice=true"])
    money = CliRunner().invoke(main, ["enqueue", "adjust_credit", "client_id=12", "amount=-5.00",
                                      "description=Goodwill gesture"])

    assert result.exit_code == 0, result.output
    assert money.exit_code == 0, money.output
    assert sent[0].actor_name == "mass_update"
    assert sent[0].kwargs == {"client_id": 12, "items": [{"type": "service", "id": 7}],
                              "changes": {"recurring_amount": "9.99"}, "create_prorata_invoice": True}
    assert sent[1].kwargs == {"client_id": 12, "amount": "-5.00", "description": "Goodwill gesture"}


def test_enqueue_refuses_an_unknown_job():
    result = CliRunner().invoke(main, ["enqueue", "bill_everyone_twice"])
    assert result.exit_code != 0 and "is not a job" in result.output


# --- what the job would refuse is refused before sending (ops/enqueue_check.py) ------------------

@pytest.fixture
def sent(monkeypatch) -> list:
    messages: list = []
    monkeypatch.setattr(broker, "enqueue", lambda message, *, delay=None: messages.append(message) or message)
    return messages


@pytest.mark.parametrize(("arguments", "said"), [
    (["invoice_idd=7", "amount=10.00", "gateway=stripe", "transaction_id=t1"],
     "invoice_idd: 7 is not an argument of apply_payment (its arguments: invoice_id, amount, gateway, "
     "transaction_id, fees)"),
    (["invoice_id=7", "gateway=stripe", "transaction_id=t1"], "amount is required by apply_payment"),
    (["invoice_id"], "'invoice_id' is not NAME=VALUE"),
])
def test_enqueue_refuses_arguments_the_job_would_refuse_and_sends_nothing(sent, arguments, said):
    result = CliRunner().invoke(main, ["enqueue", "apply_payment", *arguments])

    assert result.exit_code == 2
    assert result.output == f"Error: {said}; nothing was enqueued\n"
    assert sent == []


def test_enqueue_refuses_as_of_for_another_job(sent):
    result = CliRunner().invoke(main, ["enqueue", "relay_outbox", "--as-of", "2026-01-01"])
    assert result.exit_code == 2 and "--as-of is for daily-run only" in result.output
    assert sent == []


def _probe_broker() -> StubBroker:
    """A broker with one job that declares its rules, as the production jobs do with
    ``argument_rules``: the CLI must refuse what the job itself refuses, and only that."""
    probe = StubBroker()
    probe.emit_after("process_boot")

    @dramatiq.actor(broker=probe, actor_name="book_payment")
    @rules.argument_rules(invoice_id=rules.parse_id, paid_on=rules.parse_date,
                          gateway=functools.partial(rules.parse_text, max_length=5))
    def book_payment(invoice_id, amount, paid_on=None, gateway="bank"):
        return invoice_id

    return probe


@pytest.mark.parametrize(("argument", "said"), [
    ("invoice_id=abc", "invoice_id: 'abc' must be a positive integer id"),
    ("invoice_id=0", "invoice_id: 0 must be a positive integer id"),
    ("paid_on=2026-13-01", "paid_on: '2026-13-01' is not a valid ISO date YYYY-MM-DD"),
    ("gateway=stripe-connect", "gateway: 'stripe-connect...' is longer than 5 characters"),
])
def test_enqueue_runs_the_rules_the_job_declares(monkeypatch, argument, said):
    from dataclasses import replace

    from billingworker import bootstrap

    probe = _probe_broker()
    monkeypatch.setattr(bootstrap, "_app", replace(bootstrap.current_app(), broker=probe))
    arguments = {"invoice_id": "invoice_id=7", "amount": "amount=10.00"}
    arguments[argument.split("=")[0]] = argument

    refused = CliRunner().invoke(main, ["enqueue", "book_payment", *arguments.values()])
    taken = CliRunner().invoke(main, ["enqueue", "book_payment", "invoice_id=7", "amount=10.00",
                                      "paid_on=2026-01-31", "gateway=bank"])

    assert refused.exit_code == 2
    assert refused.output.startswith(f"Error: {said}") and "nothing was enqueued" in refused.output
    assert taken.exit_code == 0, taken.output
    assert probe.queues["default"].qsize() == 1


def test_the_job_itself_refuses_with_the_rules_the_cli_checks():
    # The same declaration, run by the job: a value the CLI refuses never reaches the job's body.
    probe = _probe_broker()
    job = probe.get_actor("book_payment")
    with pytest.raises(rules.ValidationError) as refused:
        job.fn(invoice_id="abc", amount="10.00")
    assert refused.value.field == "invoice_id"
    assert job.fn(invoice_id=7, amount="10.00") == 7
    with pytest.raises(MessageRefused) as checked:
        check_message(job, {"invoice_id": "abc", "amount": "10.00"})
    assert checked.value.field == "invoice_id"


def test_rules_must_name_parameters_of_the_job():
    with pytest.raises(TypeError, match="name no parameter: invoice"):
        rules.argument_rules(invoice=rules.parse_id)(lambda invoice_id: None)


@pytest.mark.parametrize(("job", "arguments", "said"), [
    ("apply_payment", ["invoice_id=abc", "amount=10.00", "gateway=stripe", "transaction_id=t1"],
     "invoice_id: 'abc' must be a positive integer id"),
    ("generate_due_invoices", ["client_id=0"], "client_id: 0 must be a positive integer id"),
    ("generate_due_invoices", ["as_of=2026-02-30"], "as_of: '2026-02-30' is not a valid ISO date"),
    ("mass_update", ["client_id=1", 'items=[{"type": "ship", "id": 1}]', "changes={}"],
     "items[0].type: 'ship' is not one of"),
    ("delete_client", ["client_id=3", "delete_users=yes"], "delete_users: 'yes' must be true or false"),
    # Money is checked for its shape before the currency is known (its decimal places are the job's).
    ("apply_payment", ["invoice_id=7", "amount=abc", "gateway=stripe", "transaction_id=t1"],
     "amount: 'abc' is not a decimal number"),
    ("apply_payment", ["invoice_id=7", "amount=10.00", "fees=NaN", "gateway=stripe", "transaction_id=t1"],
     "fees: 'NaN' is not a decimal number"),
    ("adjust_credit", ["client_id=3", "amount=1e400", "description=x"], "amount: '1e400' is not a decimal number"),
    ("adjust_credit", ["client_id=3", "amount=100000000000000", "description=x"],
     "amount: 100000000000000 is too large"),
    ("create_add_funds_invoice", ["client_id=3", "amount=[1]"], "amount: [1] must be a decimal string"),
])
def test_enqueue_refuses_what_the_production_jobs_refuse(sent, job, arguments, said):
    result = CliRunner().invoke(main, ["enqueue", job, *arguments])

    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {said}") and "nothing was enqueued" in result.output
    assert sent == []


def test_every_public_job_declares_rules_for_its_ids():
    # A job argument named like an id is checked by a declared rule, so enqueue refuses "abc".
    for name in broker.get_declared_actors():
        fn = broker.get_actor(name).fn
        declared = getattr(fn, "__argument_rules__", None)
        if declared is None:
            continue
        import inspect

        for param in inspect.signature(fn).parameters:
            if param.endswith("_id") and param not in ("request_id", "command_id", "transaction_id"):
                assert param in declared, f"{name}.{param} has no rule"


# --- the daily run: trigger "cli", and no real run of a future day by any path -------------------

def test_enqueue_daily_run_is_recorded_as_triggered_by_the_cli(sent):
    result = CliRunner().invoke(main, ["enqueue", "daily-run"])

    assert result.exit_code == 0, result.output
    [message] = sent
    assert message.actor_name == "run_daily_automation"
    assert message.kwargs == {"as_of": None, "dry_run": False, "trigger": "cli"}


def test_enqueue_of_the_job_itself_refuses_a_future_real_run(sent):
    real = CliRunner().invoke(main, ["enqueue", "run_daily_automation", "as_of=2199-01-01"])
    preview = CliRunner().invoke(main, ["enqueue", "run_daily_automation", "as_of=2199-01-01", "dry_run=true"])

    assert real.exit_code == 2
    assert real.output.startswith("Error: as_of: '2199-01-01' is after today (")
    assert "preview it with dry_run=true; nothing was enqueued" in real.output
    assert preview.exit_code == 0, preview.output
    assert [m.kwargs for m in sent] == [{"as_of": "2199-01-01", "dry_run": True}]


@pytest.mark.parametrize(("argument", "said"), [
    ("client_id=" + "9" * 5000, "client_id: Exceeds the limit (4300 digits)"),
    ("client_id=" + "[" * 100_000 + "]" * 100_000, "client_id: the JSON value is nested too deep"),
])
def test_enqueue_refuses_values_json_cannot_read_without_a_traceback(sent, argument, said):
    result = CliRunner().invoke(main, ["enqueue", "generate_due_invoices", argument])

    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"Error: {said}") and "nothing was enqueued" in result.output
    assert "Traceback" not in result.output and sent == []
