"""The jobs through real ``dramatiq`` worker processes over real Redis and PostgreSQL.

What the in-process tests cannot show: the worker boots from the environment alone, the
fan-out reaches it in several batch messages, a message written by a non-Python app with bare
Redis commands is understood, bad input is dead-lettered in Redis after one attempt, and two
worker processes racing for one client bill once.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from email import message_from_bytes
from email.utils import getaddresses

import pytest
from sqlalchemy import text
from sqlalchemy.orm import Session

from billingworker.domain.models import Invoice
from tests import factories as f

from .conftest import (
    NAMESPACE,
    dead_letters,
    eml_files,
    message,
    pending_messages,
    rows,
    scalar,
    wait_for,
    wait_until_idle,
)

pytestmark = pytest.mark.integration


def today() -> date:
    """The worker's "today" (BILLING_TIME_ZONE=UTC, real clock). Due dates below sit days inside
    the 14-day window, so a test that straddles midnight still bills the same things."""
    return datetime.now(UTC).date()


def recipients(path) -> set[str]:
    mail = message_from_bytes(path.read_bytes())
    return {address for _, address in getaddresses(mail.get_all("To", []))}


def count(engine, table: str) -> int:
    return scalar(engine, f"SELECT count(*) FROM {table}")


def test_fan_out_bills_each_due_service_once_in_batches_and_emails_each_invoice(
        worker, broker, pg_engine, redis_client, mail_dir):
    # Given ten clients with a service due in 5 days (and three with one due in 60 days), plus a
    # Closed client whose service is due too
    with Session(pg_engine, expire_on_commit=False) as s:
        clients = [f.client(s, email=f"client{n}@example.com") for n in range(10)]
        due = [f.service(s, c, next_due_date=today() + timedelta(days=5), domain=f"due{n}.example")
               for n, c in enumerate(clients)]
        later = [f.service(s, c, next_due_date=today() + timedelta(days=60), domain=f"later{n}.example")
                 for n, c in enumerate(clients[:3])]
        closed = f.client(s, status="Closed", email="closed@example.com")
        f.service(s, closed, next_due_date=today() + timedelta(days=5))
        s.commit()
        due_ids, later_ids = {x.id for x in due}, {x.id for x in later}

    # When the scheduler sends one generate_due_invoices for every client (no client_id)
    trigger = message("generate_due_invoices")
    broker.enqueue(trigger)

    # Then each due service is invoiced once, numbers 1..10 without gaps, each invoice emailed
    wait_for(lambda: count(pg_engine, "email_log") == 10 and len(eml_files(mail_dir)) == 10,
             "ten invoices to be created and emailed")
    wait_until_idle(redis_client)
    invoices = rows(pg_engine, "SELECT number, client_id, status, date_created FROM invoices ORDER BY number")
    assert [i.number for i in invoices] == list(range(1, 11))
    assert sorted(i.client_id for i in invoices) == sorted(c.id for c in clients)
    assert {i.status for i in invoices} == {"Unpaid"}
    items = rows(pg_engine, "SELECT item_type, item_id FROM invoice_items")
    assert {i.item_type for i in items} == {"service"}
    billed = Counter(i.item_id for i in items)
    assert set(billed) == due_ids and set(billed.values()) == {1}
    assert not later_ids & set(billed)
    assert {r.item_id for r in rows(pg_engine, "SELECT item_id FROM billed_periods")} == due_ids
    assert set().union(*(recipients(p) for p in eml_files(mail_dir))) == {c.email for c in clients}
    # FAN_OUT_BATCH_SIZE=3 reached the worker: 10 billable clients -> 4 batch messages
    assert worker.jobs_done("run_task_batch") == 4
    assert count(pg_engine, "job_failures") == 0 and dead_letters(redis_client) == []

    # When the same trigger is delivered again, and a second run for the same day is sent
    as_of = invoices[0].date_created.isoformat()
    broker.enqueue(trigger)
    broker.enqueue(message("generate_due_invoices", as_of=as_of))
    wait_for(lambda: worker.jobs_done("run_task_batch") == 12, "both runs' batches to finish")
    wait_until_idle(redis_client)

    # Then nothing changes: no invoice, number, claim or email more
    assert [r.number for r in rows(pg_engine, "SELECT number FROM invoices ORDER BY number")] == list(range(1, 11))
    assert count(pg_engine, "invoice_items") == 10 and count(pg_engine, "billed_periods") == 10
    assert count(pg_engine, "email_outbox") == 10 and count(pg_engine, "email_log") == 10
    assert len(eml_files(mail_dir)) == 10
    assert count(pg_engine, "job_failures") == 0 and dead_letters(redis_client) == []


def enqueue_like_php(client, actor_name: str, kwargs: dict, *, queue_name: str = "billing",
                     message_id: str | None = None) -> str:
    """Enqueue the way a PHP or Node app does: JSON and two Redis commands, no Dramatiq code.

    ``options.redis_message_id`` is required (the worker acks by it); ``message_id`` may differ
    from it but must be present and stable (run-once receipts are keyed by it). HSET before
    RPUSH, in MULTI/EXEC, so a worker never pops an id whose message is not written yet.
    """
    redis_message_id = str(uuid.uuid4())
    body = {
        "queue_name": queue_name,
        "actor_name": actor_name,
        "args": [],
        "kwargs": kwargs,
        "options": {"redis_message_id": redis_message_id},
        "message_id": message_id or redis_message_id,
        "message_timestamp": int(time.time() * 1000),
    }
    pipe = client.pipeline(transaction=True)
    pipe.hset(f"{NAMESPACE}:{queue_name}.msgs", redis_message_id, json.dumps(body))
    pipe.rpush(f"{NAMESPACE}:{queue_name}", redis_message_id)
    pipe.execute()
    return redis_message_id


def test_a_message_written_with_bare_redis_commands_is_processed_like_a_python_one(
        worker, pg_engine, redis_client, mail_dir):
    # Given three clients, two with a service due
    with Session(pg_engine, expire_on_commit=False) as s:
        a, b, c = (f.client(s, email=f"{name}@example.com") for name in ("a", "b", "c"))
        for x in (a, b):
            f.service(s, x, next_due_date=today() + timedelta(days=3))
        s.commit()

    # When a non-Python app enqueues with HSET + RPUSH only: message_id equal to the Redis id,
    # message_id of its own, and an add-funds request sent twice with one request_id
    enqueue_like_php(redis_client, "generate_due_invoices", {"client_id": a.id})
    enqueue_like_php(redis_client, "generate_due_invoices", {"client_id": b.id, "send_email": True},
                     message_id=f"php-{uuid.uuid4()}")
    for _ in range(2):
        enqueue_like_php(redis_client, "create_add_funds_invoice",
                         {"client_id": c.id, "amount": "25.00", "request_id": "php-add-funds-1"})

    # Then the real worker bills both clients, creates one add-funds invoice and emails all three
    wait_for(lambda: count(pg_engine, "email_log") == 3 and len(eml_files(mail_dir)) == 3,
             "three invoices to be created and emailed")
    wait_until_idle(redis_client)
    invoices = rows(pg_engine, "SELECT client_id, kind, total FROM invoices ORDER BY client_id")
    assert [(i.client_id, i.kind) for i in invoices] == [(a.id, "standard"), (b.id, "standard"),
                                                         (c.id, "add_funds")]
    assert invoices[2].total == Decimal("25.00")
    assert worker.jobs_done("create_add_funds_invoice") == 2, "both copies ran; the request_id made one invoice"
    # ... and acked every message by its redis_message_id: nothing left behind in Redis
    assert not any(pending_messages(redis_client).values())
    assert redis_client.llen(f"{NAMESPACE}:billing") == 0
    assert redis_client.scard(f"{NAMESPACE}:__acks__") == 0 and dead_letters(redis_client) == []
    assert count(pg_engine, "job_failures") == 0


def test_bad_input_is_dead_lettered_after_one_attempt_with_the_field_named(worker, broker, pg_engine, redis_client):
    # Given an unpaid invoice
    with Session(pg_engine, expire_on_commit=False) as s:
        c = f.client(s)
        invoice = Invoice(client_id=c.id, currency_id=c.currency_id, number=1, date_created=today(),
                          date_due=today(), total=10, balance_due=10)
        s.add(invoice)
        s.commit()
        invoice_id = invoice.id

    # When a payment of "-5" is reported, and one with a JSON float amount
    negative = message("apply_payment", invoice_id=invoice_id, amount="-5", gateway="stripe", transaction_id="ch_1")
    broker.enqueue(negative)
    floating = enqueue_like_php(redis_client, "apply_payment", {
        "invoice_id": invoice_id, "amount": 10.5, "gateway": "stripe", "transaction_id": "ch_2"})

    # Then both land in the dead-letter set dramatiq:billing.XQ, never retried
    wait_for(lambda: count(pg_engine, "job_failures") >= 2, "the refusals to be recorded")
    wait_for(lambda: redis_client.zcard(f"{NAMESPACE}:billing.XQ") == 2, "two dead-lettered messages")
    wait_until_idle(redis_client)
    dead = {d["message_id"]: d for d in dead_letters(redis_client)}
    assert set(dead) == {negative.message_id, floating}
    assert all(d["options"].get("retries", 0) == 0 for d in dead.values()), "validation errors are not retried"
    # ... with one job_failures row each (one attempt) naming the field and the rule
    failures = {r.message_id: r for r in rows(pg_engine, "SELECT * FROM job_failures")}
    assert count(pg_engine, "job_failures") == 2
    assert set(failures) == {negative.message_id, floating}
    assert {(r.actor, r.field, r.error) for r in failures.values()} == {("apply_payment", "amount", "ValidationError")}
    assert "must not be negative" in failures[negative.message_id].reason
    assert "not a JSON number" in failures[floating].reason
    # ... and nothing was paid
    assert count(pg_engine, "transactions") == 0
    assert scalar(pg_engine, "SELECT balance_due FROM invoices WHERE id = :i", i=invoice_id) == Decimal("10.00")
    assert "Retrying message" not in worker.log()


def test_the_same_message_delivered_twice_has_the_effect_of_one(worker, broker, pg_engine, redis_client, mail_dir):
    # Given a client with a service due, and two clients without anything
    with Session(pg_engine, expire_on_commit=False) as s:
        billed, funded, drafted = (f.client(s, email=f"{name}@example.com") for name in ("billed", "funded", "draft"))
        f.service(s, billed, next_due_date=today() + timedelta(days=2))
        s.commit()

    # When each message is delivered twice (the same message id: at-least-once delivery)
    sent = [message("generate_due_invoices", client_id=billed.id),
            message("create_add_funds_invoice", client_id=funded.id, amount="25.00"),
            message("create_invoice", client_id=drafted.id)]
    for m in sent * 2:
        broker.enqueue(m)

    # Then one invoice each, and one email each for the two that send one
    wait_for(lambda: count(pg_engine, "invoices") >= 3 and len(eml_files(mail_dir)) >= 2,
             "the three invoices and two emails")
    wait_until_idle(redis_client)
    assert sorted(rows(pg_engine, "SELECT client_id, kind, status FROM invoices")) == sorted([
        (billed.id, "standard", "Unpaid"), (funded.id, "add_funds", "Unpaid"), (drafted.id, "standard", "Draft")])
    assert count(pg_engine, "email_log") == 2 and len(eml_files(mail_dir)) == 2
    assert count(pg_engine, "email_outbox") == 2
    assert [worker.jobs_done(m.actor_name) for m in sent] == [2, 2, 2], "every copy was delivered and ran"
    assert {r.key for r in rows(pg_engine, "SELECT key FROM job_receipts")} == {
        f"{m.actor_name}:message:{m.message_id}" for m in sent[1:]}
    assert count(pg_engine, "job_failures") == 0 and dead_letters(redis_client) == []


def test_two_worker_processes_racing_for_one_client_bill_each_thing_once(
        start_worker, broker, pg_engine, redis_client, mail_dir):
    # Given two worker processes that each take at most 3 messages at a time, and a client with
    # three services due on three dates, an addon and a domain due beside the first
    first, second = (start_worker(env={"dramatiq_queue_prefetch": "3"}) for _ in range(2))
    d1, d2, d3 = (today() + timedelta(days=n) for n in (2, 4, 6))
    with Session(pg_engine, expire_on_commit=False) as s:
        c = f.client(s)
        s1 = f.service(s, c, next_due_date=d1, domain="one.example")
        f.service(s, c, next_due_date=d2, domain="two.example")
        f.service(s, c, next_due_date=d3, domain="three.example")
        f.addon(s, s1, next_due_date=d1)
        f.domain(s, c, next_due_date=d1, domain="one.example")
        s.commit()
        client_id = c.id

    # When six copies of generate_due_invoices for that client are sent at once, and all six
    # wait together on the client's row (held here) before they are let go
    with pg_engine.connect() as holder:
        holder.execute(text("SELECT id FROM clients WHERE id = :id FOR UPDATE"), {"id": client_id})
        for _ in range(6):
            broker.enqueue(message("generate_due_invoices", client_id=client_id))
        wait_for(lambda: _lock_waiters(pg_engine) == 6, "six jobs to wait on the client's row lock")
        holder.rollback()

    # Then three invoices (one per due date), each thing billed once, three emails
    wait_for(lambda: count(pg_engine, "email_log") >= 3, "three invoices to be emailed")
    wait_until_idle(redis_client)
    assert [r.number for r in rows(pg_engine, "SELECT number FROM invoices ORDER BY number")] == [1, 2, 3]
    assert sorted(r.date_due for r in rows(pg_engine, "SELECT date_due FROM invoices")) == [d1, d2, d3]
    assert count(pg_engine, "billed_periods") == 5
    assert count(pg_engine, "invoice_items") == 5
    assert count(pg_engine, "email_log") == 3 and len(eml_files(mail_dir)) == 3
    assert count(pg_engine, "job_failures") == 0 and dead_letters(redis_client) == []
    # ... and the race was real: each process ran three of the six copies
    assert (first.jobs_done("generate_due_invoices"), second.jobs_done("generate_due_invoices")) == (3, 3)
    assert "Retrying message" not in first.log() + second.log()


def _lock_waiters(engine) -> int:
    """Sessions of the test database (other than this one) waiting for a lock."""
    return scalar(engine, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                          "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
