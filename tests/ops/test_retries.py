"""``billingworker retries list|show``: the messages waiting for their next attempt, read where
Dramatiq's Retries middleware put them (``Q.DQ.msgs``) on the real Redis."""

from __future__ import annotations

import json
import re

from dramatiq import Message

from billingworker.db import unit_of_work
from billingworker.domain.models import JobFailure
from billingworker.ops.retries import Retries

from .conftest import NOW, RABBITMQ_URL, cli, message

TRACEBACK = ("Traceback (most recent call last):\n  File \"billingworker/actors/payments.py\", line 40\n"
             "psycopg.OperationalError: connection to server at \"db\" failed: password=hunter2 refused\n")


def retry_later(redis_broker, msg: Message, *, failed: int, delay_ms: int, traceback: str = TRACEBACK) -> Message:
    """Re-enqueue ``msg`` as Dramatiq's Retries does after ``failed`` failed attempts: the options
    of the attempt (retries, traceback, requeue_timestamp) and a delay; returns the stored message."""
    again = msg.copy(options={**msg.options, "retries": failed, "traceback": traceback,
                              "requeue_timestamp": msg.message_timestamp})
    return redis_broker.enqueue(again, delay=delay_ms)


def test_list_shows_actor_arguments_attempt_error_and_next_try(redis_broker, engine):
    # Given: a payment that failed twice (next try in 40 s), and a batch of the daily run that
    # failed once (in 2 minutes) whose job_failures row says which client failed
    payment = retry_later(redis_broker, message(), failed=2, delay_ms=40_000)
    batch_msg = Message(queue_name="billing", actor_name="run_task_batch", args=(),
                        kwargs={"run_id": 3, "task": "generate", "first_client_id": 1, "last_client_id": 50},
                        options={})
    batch = retry_later(redis_broker, batch_msg, failed=1, delay_ms=120_000, traceback="")
    with unit_of_work(engine) as session:
        session.add(JobFailure(actor="run_task_batch", message_id=batch.message_id, client_id=12,
                               error="ValidationError", field="currency", reason="currency: None is not set",
                               created_at=NOW))
        session.commit()

    # When
    as_json = cli(engine, "retries", "list", "--json")
    screen = cli(engine, "retries", "list")

    # Then: the next due first; attempt n of max_retries + 1; the error's last line, masked
    assert as_json.exit_code == 0, as_json.output
    first, second = json.loads(as_json.output)
    assert (first["id"], first["actor"], first["queue"]) == (payment.options["redis_message_id"], "apply_payment",
                                                             "billing")
    assert first["kwargs"] == {"invoice_id": 7, "amount": "10.00"}
    assert (first["attempt"], first["max_attempts"], first["failed_attempts"]) == (3, 11, 2)
    # an unquoted secret's value runs to the end of the line: "refused" is taken as part of it
    assert first["error"] == 'psycopg.OperationalError: connection to server at "db" failed: password=***'
    assert 30 < first["next_try_in_seconds"] <= 40 and first["next_try_at"].startswith(str(NOW.date())[:4])
    assert (second["actor"], second["attempt"], second["error"]) == ("run_task_batch", 2, "")
    assert [(f["client_id"], f["field"], f["reason"]) for f in second["failures"]] == [
        (12, "currency", "currency: None is not set")]
    assert screen.exit_code == 0, screen.output
    assert "hunter2" not in as_json.output + screen.output
    row = next(line for line in screen.output.splitlines() if line.startswith("billing") and "apply_payment" in line)
    assert "3 of 11" in row and re.search(r"\(in \d+s\)", row) and "OperationalError" in row
    batch_row = next(line for line in screen.output.splitlines() if "run_task_batch" in line)
    assert "2 of 11" in batch_row and batch.options["redis_message_id"] in batch_row
    assert "ValidationError: currency:" in screen.output and "not set" in screen.output  # its reason, folded


def test_show_by_redis_id_or_message_id(redis_broker, pg_engine):
    sent = retry_later(redis_broker, message(), failed=4, delay_ms=60_000)
    redis_id = sent.options["redis_message_id"]

    by_id = cli(pg_engine, "retries", "show", redis_id, "--json")
    by_message_id = cli(pg_engine, "retries", "show", sent.message_id, "--json")
    screen = cli(pg_engine, "retries", "show", redis_id)

    assert by_id.exit_code == 0, by_id.output
    shown = json.loads(by_id.output)
    assert shown["message"]["message_id"] == sent.message_id and shown["message"]["queue_name"] == "billing.DQ"
    assert "traceback" not in shown["message"]["options"]
    assert shown["traceback"].rstrip().endswith("password=***")
    assert (shown["attempt"], shown["max_attempts"]) == (5, 11)
    assert json.loads(by_message_id.output)["id"] == redis_id
    assert screen.output.startswith(f"queue billing   redis id {redis_id}   apply_payment   attempt 5 of 11")
    assert "traceback of the last failed attempt" in screen.output and "hunter2" not in screen.output


def test_an_unknown_job_has_an_unknown_attempt_limit(redis_broker, redis_client):
    retry_later(redis_broker, message("no_such_job"), failed=1, delay_ms=5_000)

    [retry] = Retries(redis_client).list("billing")

    assert Retries(redis_client).summary(retry)["max_attempts"] is None


def test_no_retries_and_unknown_ids(redis_client, pg_engine):
    empty = cli(pg_engine, "retries", "list")
    missing = cli(pg_engine, "retries", "show", "nope")

    assert empty.exit_code == 0 and empty.output.strip() == "no message is waiting for a retry"
    assert missing.exit_code == 1
    assert "no message waiting for a retry 'nope' in billing.DQ, emails.DQ" in missing.output
    assert "Traceback" not in missing.output


def test_on_rabbitmq_says_what_can_be_seen(pg_engine):
    listed = cli(pg_engine, "retries", "list", broker_url=RABBITMQ_URL)
    as_json = cli(pg_engine, "retries", "list", "--json", broker_url=RABBITMQ_URL)
    shown = cli(pg_engine, "retries", "show", "x", broker_url=RABBITMQ_URL)

    assert listed.exit_code == 0, listed.output
    assert "RabbitMQ keeps them in the queues billing.DQ and emails.DQ" in listed.output
    assert "waiting for a retry now: billing 0, emails 0" in listed.output
    data = json.loads(as_json.stdout)  # pika logs its 404s on stderr
    assert data["listable"] is False and data["waiting_for_retry"] == {"billing": 0, "emails": 0}
    assert shown.exit_code == 1 and "cannot list them" in shown.output
