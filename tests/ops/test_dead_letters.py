"""``billingworker dead-letters``: list, show, requeue and purge what Dramatiq dead-lettered."""

from __future__ import annotations

import json

from dramatiq import Message

from billingworker.db import unit_of_work
from billingworker.domain.models import JobFailure
from billingworker.ops.dead_letters import DeadLetters

from .conftest import NAMESPACE, NOW, cli, kill, message, take

TRACEBACK = ("Traceback (most recent call last):\n  File \"billingworker/actors/payments.py\", line 40\n"
             "psycopg.OperationalError: server closed the connection unexpectedly\n")
XQ, XQ_MSGS = f"{NAMESPACE}:billing.XQ", f"{NAMESPACE}:billing.XQ.msgs"
Q, Q_MSGS = f"{NAMESPACE}:billing", f"{NAMESPACE}:billing.msgs"


def stored(redis_client, key: str, member: str) -> dict:
    return json.loads(redis_client.hget(key, member))


def test_list_shows_actor_retries_and_the_exception_line(redis_broker, pg_engine):
    # Given: a message that exhausted its retries, and one refused at once (bad input)
    tired = kill(redis_broker, message(retries=10, traceback=TRACEBACK))
    refused_message = message("create_invoice")
    refused = kill(redis_broker, refused_message)
    with unit_of_work(pg_engine) as session:
        session.add(JobFailure(actor="create_invoice", message_id=refused_message.message_id, error="ValidationError",
                               field="amount", reason="10.5 is a float", created_at=NOW))
        session.commit()

    # When
    result = cli(pg_engine, "dead-letters", "list", "--json")

    # Then
    assert result.exit_code == 0, result.output
    rows = {r["id"]: r for r in json.loads(result.output)}
    assert rows[tired]["actor"] == "apply_payment" and rows[tired]["retries"] == 10
    assert rows[tired]["error"] == "psycopg.OperationalError: server closed the connection unexpectedly"
    assert rows[tired]["age_seconds"] < 60
    # the refusal's reason comes from job_failures
    assert rows[refused]["retries"] == 0
    assert rows[refused]["error"] == "ValidationError: amount 10.5 is a float"
    table = cli(pg_engine, "dead-letters", "list").output
    assert "apply_payment" in table and tired in table


def test_show_prints_the_whole_message_by_redis_id_or_message_id(redis_broker, pg_engine):
    msg = message(retries=3, traceback=TRACEBACK)
    dead_id = kill(redis_broker, msg)

    by_redis_id = cli(pg_engine, "dead-letters", "show", dead_id, "--json")
    by_message_id = cli(pg_engine, "dead-letters", "show", msg.message_id, "--json")

    assert by_redis_id.exit_code == 0, by_redis_id.output
    shown = json.loads(by_redis_id.output)
    assert shown["message_id"] == msg.message_id and shown["kwargs"] == {"invoice_id": 7, "amount": "10.00"}
    assert shown["options"]["traceback"] == TRACEBACK
    assert by_message_id.output == by_redis_id.output
    human = cli(pg_engine, "dead-letters", "show", dead_id).output
    assert human.startswith(f"queue billing   redis id {dead_id}")
    assert human.rstrip().endswith("psycopg.OperationalError: server closed the connection unexpectedly")


def test_show_of_an_unknown_id_fails_with_the_queues_searched(redis_client, pg_engine):
    result = cli(pg_engine, "dead-letters", "show", "nope")

    assert result.exit_code == 1
    assert "no dead letter 'nope' in billing.XQ, emails.XQ" in result.output


def test_requeue_puts_the_message_back_with_retries_reset(redis_broker, redis_client, pg_engine):
    # Given
    msg = message(retries=10, traceback=TRACEBACK, requeue_timestamp=123)
    dead_id = kill(redis_broker, msg)

    # When
    result = cli(pg_engine, "dead-letters", "requeue", dead_id)

    # Then: gone from the dead letters, back at the end of the queue, in the list and the hash
    assert result.exit_code == 0, result.output
    assert redis_client.zcard(XQ) == 0 and redis_client.hlen(XQ_MSGS) == 0
    [new_id] = [i.decode() for i in redis_client.lrange(Q, 0, -1)]
    assert new_id != dead_id and f"as {new_id}" in result.output
    back = stored(redis_client, Q_MSGS, new_id)
    assert back["options"] == {"retries": 0, "redis_message_id": new_id}
    assert back["message_id"] == msg.message_id and back["kwargs"] == msg.kwargs
    assert back["queue_name"] == "billing" and back["args"] == []
    # ... and a worker takes it and acknowledges it by its redis id
    consumer, proxy = take(redis_broker)
    assert proxy.message_id == msg.message_id and proxy.options["retries"] == 0
    consumer.ack(proxy)
    assert redis_client.hlen(Q_MSGS) == 0
    consumer.close()


def test_requeue_all_of_a_queue(redis_broker, redis_client, pg_engine):
    for _ in range(3):
        kill(redis_broker, message(retries=10, traceback=TRACEBACK))
    kill(redis_broker, message("deliver_email", "emails"), queue="emails")

    assert cli(pg_engine, "dead-letters", "requeue", "--all").exit_code == 2  # which queue?
    result = cli(pg_engine, "dead-letters", "requeue", "--all", "--queue", "billing")

    assert result.exit_code == 0, result.output
    assert "requeued 3 dead letters to billing" in result.output
    assert redis_client.llen(Q) == 3 and redis_client.zcard(XQ) == 0
    assert {stored(redis_client, Q_MSGS, i)["options"]["retries"] for i in redis_client.lrange(Q, 0, -1)} == {0}
    assert redis_client.zcard(f"{NAMESPACE}:emails.XQ") == 1  # the other queue is untouched


def test_a_requeue_loses_cleanly_to_a_purge_that_came_first(redis_broker, redis_client):
    store = DeadLetters(redis_client)
    kill(redis_broker, message())
    [letter] = store.list("billing")

    assert store.purge(letter)
    assert store.requeue(letter) is None
    assert redis_client.llen(Q) == 0 and redis_client.hlen(Q_MSGS) == 0


def test_purge_one_asks_first_unless_yes(redis_broker, redis_client, pg_engine):
    keep = kill(redis_broker, message())
    drop = kill(redis_broker, message())

    refused = cli(pg_engine, "dead-letters", "purge", drop, input="n\n")
    assert refused.exit_code == 1 and redis_client.zcard(XQ) == 2

    result = cli(pg_engine, "dead-letters", "purge", drop, "--yes")

    assert result.exit_code == 0, result.output
    assert [m.decode() for m in redis_client.zrange(XQ, 0, -1)] == [keep]
    assert redis_client.hkeys(XQ_MSGS) == [keep.encode()]


def test_purge_all_of_a_queue(redis_broker, redis_client, pg_engine):
    for _ in range(2):
        kill(redis_broker, message())

    result = cli(pg_engine, "dead-letters", "purge", "--all", "--queue", "billing", input="y\n")

    assert result.exit_code == 0, result.output
    assert "purged 2 dead letters of billing" in result.output
    assert redis_client.exists(XQ, XQ_MSGS) == 0


def test_dead_letters_need_a_redis_broker(pg_engine):
    result = cli(pg_engine, "dead-letters", "list", broker_url="amqp://guest:guest@127.0.0.1:5672/%2F")

    assert result.exit_code == 1
    assert "billing.XQ" in result.output and "amqp://guest:***@" in result.output


# --- secrets and bounds -------------------------------------------------------------------------

CARD = "4111 1111 1111 1111"
# (the card as digits in a row: four alone may turn up in a message id or a timestamp)
SECRETS = ("hunter2", "4111 1111", "tok_live_abc123", "s3cr3t")


def refused_with_secrets(redis_broker, pg_engine) -> tuple[str, Message]:
    """A message refused for bad input, carrying a nested password, a card number and a token,
    dead-lettered by a worker on the real Redis, with its job_failures row as the worker left it
    before reasons were masked."""
    msg = Message(queue_name="billing", actor_name="run_module_command", args=(f"card {CARD}",), options={},
                  kwargs={"item_type": "service", "item_id": 5, "command": "create",
                          "params": {"account": {"pass": "hunter2", "user": "ada"}, "note": f"paid with {CARD}"},
                          "gateway_token": "tok_live_abc123"})
    dead_id = kill(redis_broker, msg)
    with unit_of_work(pg_engine) as session:
        session.add(JobFailure(actor="run_module_command", message_id=msg.message_id, error="ValidationError",
                               field="params", reason="params: 'password=s3cr3t' is refused", created_at=NOW))
        session.commit()
    return dead_id, msg


def test_show_masks_a_refused_password_card_number_and_token(redis_broker, pg_engine):
    dead_id, msg = refused_with_secrets(redis_broker, pg_engine)

    as_json = cli(pg_engine, "dead-letters", "show", dead_id, "--json")
    human = cli(pg_engine, "dead-letters", "show", msg.message_id)

    assert as_json.exit_code == 0 and human.exit_code == 0, as_json.output + human.output
    for output in (as_json.output, human.output):
        assert not any(secret in output for secret in SECRETS), output
    shown = json.loads(as_json.output)
    assert shown["kwargs"]["params"] == {"account": {"pass": "***", "user": "ada"}, "note": "paid with ****1111"}
    assert shown["kwargs"]["gateway_token"] == "***" and shown["args"] == ["card ****1111"]
    assert shown["kwargs"]["item_id"] == 5 and shown["message_id"] == msg.message_id


def test_list_json_masks_a_refused_password_card_number_and_token(redis_broker, pg_engine):
    dead_id, _ = refused_with_secrets(redis_broker, pg_engine)

    result = cli(pg_engine, "dead-letters", "list", "--json")

    assert result.exit_code == 0, result.output
    assert not any(secret in result.output for secret in SECRETS), result.output
    [row] = json.loads(result.output)
    assert row["id"] == dead_id and row["kwargs"]["params"]["account"]["pass"] == "***"
    assert row["error"] == "ValidationError: params: 'password=***' is refused"  # the reason, masked


def test_show_masks_and_bounds_the_traceback_of_a_retried_message(redis_broker, pg_engine):
    # (a comma ends the password's value: the words after an unquoted secret up to the end of
    # the line are taken as part of it, see domain/redaction.py)
    traceback = TRACEBACK + f"RuntimeError: login password=hunter2, card {CARD} " + "x" * 1_000_000 + "\n"
    dead_id = kill(redis_broker, message(retries=10, traceback=traceback))

    human = cli(pg_engine, "dead-letters", "show", dead_id)
    listed = cli(pg_engine, "dead-letters", "list", "--json")

    assert "hunter2" not in human.output and "4111 1111" not in human.output and len(human.output) < 25_000
    assert "RuntimeError: login password=***, card ****1111 xxx" in human.output
    [row] = json.loads(listed.output)
    assert row["error"].startswith("RuntimeError: login password=***, card ****1111") and len(row["error"]) <= 500


def put_raw(redis_client, dead_id: str, payload: bytes) -> None:
    """A dead letter whose stored payload is ``payload`` (not written by Dramatiq)."""
    redis_client.zadd(XQ, {dead_id: 1_764_050_000_000})
    redis_client.hset(XQ_MSGS, dead_id, payload)


def test_requeue_of_a_letter_that_is_not_json_fails_with_a_clear_error(redis_client, redis_broker, pg_engine):
    put_raw(redis_client, "garbage-1", b"not json at all")
    good = kill(redis_broker, message())

    result = cli(pg_engine, "dead-letters", "requeue", "garbage-1", good)

    assert result.exit_code == 1
    assert "dead letter garbage-1 in billing.XQ cannot be requeued: its payload is not JSON" in result.output
    assert "Traceback" not in result.output
    # the other one was requeued; the garbage stays for an operator to read and purge
    assert f"requeued {good}" in result.output
    assert [m.decode() for m in redis_client.zrange(XQ, 0, -1)] == ["garbage-1"] and redis_client.llen(Q) == 1


def test_requeue_all_skips_and_names_the_letters_that_are_not_messages(redis_client, redis_broker, pg_engine):
    put_raw(redis_client, "garbage-1", b"[" * 100_000)
    put_raw(redis_client, "garbage-2", b"[1, 2]")
    kill(redis_broker, message())

    result = cli(pg_engine, "dead-letters", "requeue", "--all", "--queue", "billing")

    assert result.exit_code == 0, result.output
    assert "requeued 1 dead letters to billing" in result.output
    assert "skipped garbage-1: its payload is not JSON (RecursionError)" in result.output
    assert "skipped garbage-2: its payload is a JSON list, not a message object" in result.output
    assert redis_client.zcard(XQ) == 2 and redis_client.llen(Q) == 1


def test_show_and_list_of_letters_that_are_not_messages(redis_client, pg_engine):
    put_raw(redis_client, "deep", b"[" * 100_000)
    put_raw(redis_client, "card", f"paid {CARD} ".encode() + b"y" * 100_000)

    deep = cli(pg_engine, "dead-letters", "show", "deep")
    card = cli(pg_engine, "dead-letters", "show", "card", "--json")
    listed = cli(pg_engine, "dead-letters", "list", "--json")

    assert deep.exit_code == 0 and card.exit_code == 0 and listed.exit_code == 0
    assert json.loads(card.output)["undecodable"].startswith("paid ****1111 yyy")
    assert "(100025 characters)" in card.output and len(card.output) < 2_500
    assert {r["id"] for r in json.loads(listed.output)} == {"deep", "card"}


# --- why it was refused, and a corrected requeue ------------------------------------------------

def refused_payment(redis_broker, engine) -> tuple[str, Message]:
    """An apply_payment message refused at once for bad input (no gateway nor transaction id),
    dead-lettered by a worker, with the job_failures row the worker wrote."""
    msg = message()  # apply_payment(invoice_id=7, amount="10.00")
    dead_id = kill(redis_broker, msg)
    with unit_of_work(engine) as session:
        session.add(JobFailure(actor="apply_payment", message_id=msg.message_id, error="ValidationError",
                               field="arguments", reason="arguments: ['amount', 'invoice_id'] do not fit apply_payment",
                               created_at=NOW))
        session.commit()
    return dead_id, msg


def test_show_gives_the_refusal_reason_from_job_failures(redis_broker, engine):
    dead_id, msg = refused_payment(redis_broker, engine)

    human = cli(engine, "dead-letters", "show", dead_id)
    as_json = cli(engine, "dead-letters", "show", dead_id, "--json")

    assert human.exit_code == 0 and as_json.exit_code == 0, human.output + as_json.output
    assert "Refused (job_failures)" in human.output
    row = next(line for line in human.output.splitlines() if line.startswith("ValidationError"))
    assert row.split()[:2] == ["ValidationError", "arguments"] and "do not fit apply_payment" in row
    shown = json.loads(as_json.output)
    [failure] = shown["job_failures"]
    assert (failure["error"], failure["field"]) == ("ValidationError", "arguments")
    assert failure["reason"] == "arguments: ['amount', 'invoice_id'] do not fit apply_payment"
    assert shown["refusal"].startswith("ValidationError: arguments: ['amount'")


def test_show_of_a_letter_that_died_of_retries_has_no_refusal(redis_broker, pg_engine):
    dead_id = kill(redis_broker, message(retries=10, traceback=TRACEBACK))

    shown = json.loads(cli(pg_engine, "dead-letters", "show", dead_id, "--json").output)

    assert shown["job_failures"] == [] and shown["refusal"] is None
    assert "Refused" not in cli(pg_engine, "dead-letters", "show", dead_id).output


def test_requeue_with_corrected_arguments(redis_broker, redis_client, engine):
    # Given: a payment refused for its missing arguments
    dead_id, msg = refused_payment(redis_broker, engine)

    # When the operator adds them
    result = cli(engine, "dead-letters", "requeue", dead_id, "--set", "gateway=banktransfer",
                 "--set", 'transaction_id="TX-1"', "--set", "amount=12.50")

    # Then the message is back with them (money kept as a decimal string), no warning given
    assert result.exit_code == 0, result.output
    assert "with amount, gateway, transaction_id corrected" in result.output and "Warning" not in result.output
    [new_id] = [i.decode() for i in redis_client.lrange(Q, 0, -1)]
    back = stored(redis_client, Q_MSGS, new_id)
    assert back["kwargs"] == {"invoice_id": 7, "amount": "12.50", "gateway": "banktransfer", "transaction_id": "TX-1"}
    assert back["message_id"] == msg.message_id and redis_client.zcard(XQ) == 0


def test_requeue_refuses_a_correction_the_job_would_refuse(redis_broker, redis_client, pg_engine):
    dead_id, _ = refused_payment(redis_broker, pg_engine)

    result = cli(pg_engine, "dead-letters", "requeue", dead_id, "--set", "gatewya=bank", "--yes")
    malformed = cli(pg_engine, "dead-letters", "requeue", dead_id, "--set", "gateway")

    assert result.exit_code == 1
    assert "gatewya" in result.output and "not an argument of apply_payment" in result.output
    assert "Traceback" not in result.output
    assert malformed.exit_code == 2 and "'gateway' is not NAME=VALUE" in malformed.output
    # nothing was sent: the letter is still dead
    assert redis_client.zcard(XQ) == 1 and redis_client.llen(Q) == 0


def test_requeue_unchanged_of_a_refused_letter_warns_and_asks(redis_broker, redis_client, pg_engine):
    dead_id, _ = refused_payment(redis_broker, pg_engine)

    declined = cli(pg_engine, "dead-letters", "requeue", dead_id, input="n\n")

    assert declined.exit_code == 1
    assert f"Warning: {dead_id} (apply_payment, message" in declined.output
    assert "died of bad input (ValidationError: arguments" in declined.output
    assert "requeued unchanged it will die again" in declined.output
    assert redis_client.zcard(XQ) == 1 and redis_client.llen(Q) == 0

    accepted = cli(pg_engine, "dead-letters", "requeue", dead_id, "--yes")

    assert accepted.exit_code == 0, accepted.output
    assert "will die again" in accepted.output and f"requeued {dead_id}" in accepted.output
    assert redis_client.zcard(XQ) == 0 and redis_client.llen(Q) == 1


def test_requeue_all_warns_of_the_refused_and_shows_progress(redis_broker, redis_client, pg_engine):
    refused_payment(redis_broker, pg_engine)
    for _ in range(2):
        kill(redis_broker, message(retries=10, traceback=TRACEBACK))

    declined = cli(pg_engine, "dead-letters", "requeue", "--all", "--queue", "billing", input="n\n")

    assert declined.exit_code == 1 and redis_client.zcard(XQ) == 3
    assert "Warning: 1 of the 3 dead letters of billing died of bad input" in declined.output

    result = cli(pg_engine, "dead-letters", "requeue", "--all", "--queue", "billing", "--yes")

    assert result.exit_code == 0, result.output
    assert "requeueing billing" in result.output and "3/3" in result.output  # the progress bar, finished
    assert "requeued 3 dead letters to billing" in result.output
    assert redis_client.zcard(XQ) == 0 and redis_client.llen(Q) == 3


def test_requeue_set_goes_with_named_letters_only(redis_client, pg_engine):
    result = cli(pg_engine, "dead-letters", "requeue", "--all", "--queue", "billing", "--set", "a=1")

    assert result.exit_code == 2 and "requeue --set corrects named messages, not --all" in result.output


# --- positional arguments: deliver_email(42) is sent so (actors/emails.py) -----------------------

def test_list_and_show_name_positional_arguments_by_the_signature(redis_broker, pg_engine):
    dead_id = kill(redis_broker, Message(queue_name="emails", actor_name="deliver_email", args=(42,), kwargs={},
                                         options={}), "emails")

    listed = json.loads(cli(pg_engine, "dead-letters", "list", "--json").output)
    table = cli(pg_engine, "dead-letters", "list").output
    shown = json.loads(cli(pg_engine, "dead-letters", "show", dead_id, "--json").output)

    [row] = listed
    assert row["arguments"] == {"email_id": 42} and row["args"] == [42] and row["kwargs"] == {}
    assert '{"email_id":42}' in table
    assert shown["arguments"] == {"email_id": 42} and shown["args"] == [42]


def test_a_corrected_positional_message_is_requeued_by_name_and_a_real_worker_runs_it(
        redis_broker, redis_client, engine, monkeypatch):
    # Given: deliver_email(42), dead (no such email), and email 43 waiting to be delivered
    from datetime import UTC, datetime

    from dramatiq import Worker

    from billingworker import runtime as rt
    from billingworker.actors import broker
    from billingworker.adapters.mailer import MemoryMailer
    from billingworker.clock import FixedClock
    from tests.factories import a_client, outbox_row, status_of

    email = outbox_row(engine, a_client(engine), status="queued", error="")
    msg = Message(queue_name="emails", actor_name="deliver_email", args=(email + 1000,), kwargs={}, options={})
    dead_id = kill(redis_broker, msg, "emails")

    # When the operator corrects the email id
    result = cli(engine, "dead-letters", "requeue", dead_id, "--set", f"email_id={email}", "--yes")

    # Then it goes back with every argument by name, none positional
    assert result.exit_code == 0, result.output
    assert "with email_id corrected" in result.output
    [new_id] = [i.decode() for i in redis_client.lrange("dramatiq:emails", 0, -1)]
    raw = redis_client.hget("dramatiq:emails.msgs", new_id)
    back = json.loads(raw)
    assert back["args"] == [] and back["kwargs"] == {"email_id": email}
    # and a real worker runs it: the email is sent, nothing is dead-lettered
    mailer = MemoryMailer()
    rt.configure(engine=engine, clock=FixedClock(datetime.now(UTC)), mailer=mailer,
                 mail_from="Billing <billing@example.com>")
    broker.flush_all()
    worker = Worker(broker, worker_timeout=50, worker_threads=1)
    worker.start()
    try:
        broker.enqueue(Message.decode(raw))
        broker.join("emails", fail_fast=True)
    finally:
        worker.stop()
        dead = list(broker.dead_letters)
        broker.flush_all()
        rt.reset()
    assert dead == []
    assert status_of(engine, email) == "sent" and len(mailer.sent) == 1


def test_a_correction_is_checked_with_the_positional_arguments_bound(redis_broker, redis_client, pg_engine):
    # Given: apply_payment(7, "10.00") sent positionally, refused for its missing gateway
    dead_id = kill(redis_broker, Message(queue_name="billing", actor_name="apply_payment", args=(7, "10.00"),
                                         kwargs={}, options={}))

    # When the operator adds what was missing (or mistypes it)
    typo = cli(pg_engine, "dead-letters", "requeue", dead_id, "--set", "gatewya=bank")
    fixed = cli(pg_engine, "dead-letters", "requeue", dead_id, "--set", "gateway=bank",
                "--set", "transaction_id=TX-1")

    # Then the check saw invoice_id and amount (given positionally): the typo is refused, the fix sent
    assert typo.exit_code == 1 and "gatewya" in typo.output and "not an argument of apply_payment" in typo.output
    assert fixed.exit_code == 0, fixed.output
    [new_id] = [i.decode() for i in redis_client.lrange(Q, 0, -1)]
    back = stored(redis_client, Q_MSGS, new_id)
    assert back["args"] == []
    assert back["kwargs"] == {"invoice_id": 7, "amount": "10.00", "gateway": "bank", "transaction_id": "TX-1"}


def test_requeue_refuses_a_correction_to_a_future_real_run(redis_broker, redis_client, pg_engine):
    dead_id = kill(redis_broker, Message(queue_name="billing", actor_name="run_daily_automation", args=(),
                                         kwargs={"as_of": "2026-13-01"}, options={}))

    future = cli(pg_engine, "dead-letters", "requeue", dead_id, "--set", "as_of=2199-01-01")

    assert future.exit_code == 1
    assert "as_of: '2199-01-01' is after today (" in future.output and "preview it with dry_run=true" in future.output
    assert redis_client.zcard(XQ) == 1 and redis_client.llen(Q) == 0


def test_requeue_set_values_json_cannot_read_are_refused_without_a_traceback(redis_broker, redis_client, pg_engine):
    dead_id, _ = refused_payment(redis_broker, pg_engine)

    digits = cli(pg_engine, "dead-letters", "requeue", dead_id, "--set", "invoice_id=" + "9" * 5000)
    nested = cli(pg_engine, "dead-letters", "requeue", dead_id, "--set", "invoice_id=" + "[" * 100_000)

    assert digits.exit_code == 2 and "invoice_id: Exceeds the limit (4300 digits)" in digits.output
    assert nested.exit_code == 2 and "invoice_id: the JSON value is nested too deep" in nested.output
    assert redis_client.zcard(XQ) == 1 and redis_client.llen(Q) == 0


def test_newest_death_is_the_last_letter_to_die_read_without_the_bodies(redis_broker, redis_client):
    # Given an empty dead-letter queue, then two letters that died one after the other
    store = DeadLetters(redis_client)
    assert store.newest_death_ms("billing") == 0
    kill(redis_broker, message())
    kill(redis_broker, message())

    # When the console asks when the last one died (what "purge all" may act on)
    newest = store.newest_death_ms("billing")

    # Then it is the death of the last letter of the list, and the emails queue has none
    assert newest == store.list("billing")[-1].died_at_ms > 0
    assert store.newest_death_ms("emails") == 0
