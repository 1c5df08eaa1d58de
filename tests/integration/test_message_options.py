"""A message from outside cannot choose how its job is run: retries, backoff, time limit and
callbacks are the actor's own (before: 306 attempts of one message in 10 s)."""

from __future__ import annotations

import json
import time

import pytest
from dramatiq import Message

from billingworker.db import session_factory
from tests import factories as f
from tests.factories import invoice_email
from tests.redis_server import free_port

from .conftest import NAMESPACE, pending_messages, scalar, wait_for

pytestmark = pytest.mark.integration

HOSTILE = {"max_retries": 1000, "min_backoff": 1, "max_backoff": 1, "time_limit": 1,
           "max_age": 1, "on_failure": "delete_client", "on_retry_exhausted": "delete_client",
           "on_success": "delete_client", "notify_shutdown": True}


def test_a_sender_cannot_buy_retries_or_fast_backoff(start_worker, broker, pg_engine, redis_client):
    # Given an email and a mail server that is down (every attempt fails, a transient error)
    with session_factory(pg_engine)() as s:
        email_id = invoice_email(s).id
        s.commit()
    start_worker(threads=2, env={"MAIL_URL": f"smtp://127.0.0.1:{free_port()}"})

    # When its delivery arrives with options asking for 1,000 retries 1 ms apart
    broker.enqueue(Message(queue_name="emails", actor_name="deliver_email", args=(),
                           kwargs={"email_id": email_id}, options=dict(HOSTILE)))
    time.sleep(6)

    # Then the actor's backoff applied: about 1 s, 2 s, 4 s... (with jitter), a handful of attempts
    attempts = scalar(pg_engine, "SELECT attempts FROM email_outbox WHERE id = :i", i=email_id)
    assert 1 <= attempts <= 4, f"{attempts} attempts in 6 s"
    # and the retry in the delay queue carries none of the sender's options
    [retry] = [json.loads(v) for v in redis_client.hvals(f"{NAMESPACE}:emails.DQ.msgs")]
    assert set(retry["options"]) <= {"redis_message_id", "retries", "traceback", "requeue_timestamp", "eta"}
    assert 1 <= retry["options"]["retries"] <= 4


def test_a_sender_cannot_set_a_time_limit_or_chain_callbacks(start_worker, broker, pg_engine, redis_client):
    # Given a client
    with session_factory(pg_engine)() as s:
        client = f.client(s)
        s.commit()
        client_id = client.id
    worker = start_worker(threads=2)

    # When a job arrives with a 1 ms time limit, a 1 ms age limit and callbacks to delete_client
    broker.enqueue(Message(queue_name="billing", actor_name="create_invoice", args=(),
                           kwargs={"client_id": client_id}, options=dict(HOSTILE)))
    wait_for(lambda: not any(pending_messages(redis_client).values()), "the message processed")

    # Then it ran to its end under the actor's own limits, and no callback was sent
    assert scalar(pg_engine, "SELECT count(*) FROM invoices WHERE client_id = :c", c=client_id) == 1
    assert scalar(pg_engine, "SELECT count(*) FROM clients WHERE id = :c", c=client_id) == 1
    assert worker.jobs_done("delete_client") == 0
    assert "options max_age, max_backoff, max_retries, min_backoff" in worker.log()
