"""Malformed messages pushed with bare Redis commands into a real worker: each is refused at once.

Random (seeded) and hand-picked bad messages, shuffled among valid ones, are written exactly as
Dramatiq's Redis broker enqueues (``dispatch.lua``, command ``enqueue``: HSET of the payload in
``<ns>:<queue>.msgs`` under its Redis id, RPUSH of that id on ``<ns>:<queue>``) before the
worker starts, so that its first fetches mix garbage and good messages. For every bad message:
its raw payload is in the dead-letter queue after one attempt (the payload as pushed: a retry
would have been re-enqueued with ``options.retries``), one ``job_failures`` row names the field
and the rule, and no table but ``job_failures`` changed. Every valid message was processed.
An unknown queue is not tried: a queue no worker consumes is never read.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.orm import Session

from billingworker.domain.models import Invoice
from tests import factories as f

from .conftest import NAMESPACE, rows, scalar, wait_until_idle
from .server_databases import (  # noqa: F401 - fixtures: the test runs on each server database
    on_each_server_database,
    server_database_engine,
    server_database_url,
)

pytestmark = pytest.mark.integration

SEED = 20260808
#: Random bad messages, and valid messages sent among them.
RANDOM_BAD = 150
VALID = 40
MAX_ID = 2**31 - 1
#: The worker must be done with everything within this many seconds.
DONE_WITHIN = 60.0


@dataclass
class Pushed:
    """One message written to Redis, and what must become of it."""

    kind: str
    queue: str
    redis_id: str
    payload: bytes
    #: For a bad message: the ``job_failures`` field, a piece of the reason, and the actor named.
    field: str = ""
    reason: str = ""
    actor: str = ""

    @property
    def bad(self) -> bool:
        return self.kind != "valid"


def body(actor: str, kwargs: Any, *, queue: str = "billing", redis_id: str, **overrides: Any) -> dict:
    """The JSON of a message as a PHP or Node app writes it (docs/jobs.md)."""
    message = {"queue_name": queue, "actor_name": actor, "args": [], "kwargs": kwargs,
               "options": {"redis_message_id": redis_id}, "message_id": redis_id,
               "message_timestamp": int(time.time() * 1000)}
    message.update(overrides)
    return message


def push_all(client, messages: list[Pushed]) -> None:
    """HSET then RPUSH per message, as Dramatiq's ``enqueue`` does, all in one transaction."""
    pipe = client.pipeline(transaction=True)
    for m in messages:
        pipe.hset(f"{NAMESPACE}:{m.queue}.msgs", m.redis_id, m.payload)
        pipe.rpush(f"{NAMESPACE}:{m.queue}", m.redis_id)
    pipe.execute()


def encoded(message: Any) -> bytes:
    return json.dumps(message).encode()


# --- the bad messages -----------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    """A job, valid arguments for it, and the argument a bad value replaces."""

    actor: str
    kwargs: dict
    field: str
    queue: str = "billing"


def id_targets(ids: dict[str, int]) -> list[Target]:
    c, d, inv = ids["client"], ids["other_client"], ids["invoice"]
    payment = {"invoice_id": inv, "amount": "1.00", "gateway": "stripe", "transaction_id": "ch_1"}
    return [
        Target("apply_payment", payment, "invoice_id"),
        Target("adjust_credit", {"client_id": c, "amount": "1.00", "description": "x"}, "client_id"),
        Target("create_invoice", {"client_id": c}, "client_id"),
        Target("create_add_funds_invoice", {"client_id": c, "amount": "5.00"}, "client_id"),
        Target("close_client", {"client_id": c}, "client_id"),
        Target("delete_client", {"client_id": c}, "client_id"),
        Target("export_client_data", {"client_id": c}, "client_id"),
        Target("generate_due_invoices", {"client_id": c, "send_email": False}, "client_id"),
        Target("merge_clients", {"source_client_id": c, "target_client_id": d}, "source_client_id"),
        Target("merge_clients", {"source_client_id": c, "target_client_id": d}, "target_client_id"),
        Target("send_client_email", {"client_id": c, "subject": "Hi", "body": "Hello"}, "client_id"),
        Target("normalize_phone_numbers", {"client_id": c}, "client_id"),
        Target("send_password_reset_email", {"user_id": 1}, "user_id"),
        Target("run_module_command", {"item_type": "service", "item_id": 1, "command": "suspend"}, "item_id"),
        Target("advance_daily_run", {"run_id": 1}, "run_id"),
        Target("deliver_email", {"email_id": 1}, "email_id", queue="emails"),
        Target("relay_outbox", {"limit": 10}, "limit", queue="emails"),
    ]


def text_targets(ids: dict[str, int]) -> list[Target]:
    c, inv = ids["client"], ids["invoice"]
    payment = {"invoice_id": inv, "amount": "1.00", "gateway": "stripe", "transaction_id": "ch_1"}
    return [
        Target("apply_payment", payment, "gateway"),
        Target("apply_payment", payment, "transaction_id"),
        Target("adjust_credit", {"client_id": c, "amount": "1.00", "description": "x"}, "description"),
        Target("send_password_reset_email", {"email": "ada@example.com"}, "email"),
        Target("create_invoice", {"client_id": c, "request_id": "r-1"}, "request_id"),
        Target("send_client_email", {"client_id": c, "subject": "Hi", "body": "Hello"}, "subject"),
        Target("send_client_email", {"client_id": c, "template": "welcome"}, "template"),
        Target("mass_update", {"client_id": c, "items": [{"type": "service", "id": 1}],
                               "changes": {"payment_method": "stripe"}}, "changes.payment_method"),
    ]


def bad_id(rng: random.Random) -> Any:
    return rng.choice([
        0, -1, -(2**40), MAX_ID + 1, rng.randrange(MAX_ID + 1, 2**63), 2**63, 2**70, rng.randrange(2**64, 2**400),
        "2147483648", "0", "-3", " 12", "12 ", "1_0", "١٢", "12a", "", "9" * 400, "9" * rng.randrange(11, 4000),
        "9" * 5000, 1.5, 12.0, True, False, [1], {"id": 1},
    ])


def with_control(rng: random.Random, *, multiline: bool = False) -> str:
    """A short word with a control character (C0, DEL, C1) or a lone surrogate inside."""
    forbidden = [c for c in map(chr, [*range(0x20), 0x7F, *range(0x80, 0xA0)])
                 if not (multiline and c in "\t\n\r")] + ["\ud800", "\udfff"]
    word = "".join(rng.choice("abcdefxyz") for _ in range(rng.randrange(2, 12)))
    at = rng.randrange(1, len(word))
    return word[:at] + rng.choice(forbidden) + word[at:]


def random_bad(rng: random.Random, ids: dict[str, int], n: int) -> Pushed:
    redis_id = f"bad-{n}-{uuid.uuid4()}"
    kind = rng.choice(["id", "id", "text", "structure", "structure", "bytes"])
    if kind == "id":
        target = rng.choice(id_targets(ids))
        kwargs = {**target.kwargs, target.field: bad_id(rng)}
        return Pushed("id", target.queue, redis_id, encoded(body(target.actor, kwargs, queue=target.queue,
                                                                 redis_id=redis_id)),
                      target.field, f"must be a positive integer id of at most {MAX_ID}", target.actor)
    if kind == "text":
        target = rng.choice(text_targets(ids))
        if target.field == "changes.payment_method":
            kwargs = {**target.kwargs, "changes": {"payment_method": with_control(rng)}}
        else:
            kwargs = {**target.kwargs, target.field: with_control(rng)}
        return Pushed("text", "billing", redis_id, encoded(body(target.actor, kwargs, redis_id=redis_id)),
                      target.field, "must not contain control characters", target.actor)
    if kind == "bytes":
        # Not UTF-8 (a lone 0xff byte never is) or not JSON.
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        payload, reason = rng.choice([(b"\xff" + junk, "is not UTF-8"), (b"{" + junk.hex().encode(), "is not JSON")])
        return Pushed("undecodable", "billing", redis_id, payload, "message", reason)
    valid = body("close_client", {"client_id": ids["client"]}, redis_id=redis_id)
    mutation = rng.choice(["missing", "type", "option", "actor", "queue", "message_id", "extra", "redis_id"])
    if mutation == "missing":
        name = rng.choice(["queue_name", "actor_name", "args", "kwargs", "options"])
        del valid[name]
        return Pushed("structure", "billing", redis_id, encoded(valid), f"message.{name}", "is missing",
                      "" if name == "actor_name" else "close_client")
    if mutation == "type":
        name = rng.choice(["queue_name", "actor_name", "args", "kwargs", "options"])
        valid[name] = rng.choice([None, 7, 2.5, True, "text", [1], {"a": 1}])
        if isinstance(valid[name], list if name == "args" else dict if name in ("kwargs", "options") else str):
            valid[name] = None
        return Pushed("structure", "billing", redis_id, encoded(valid), f"message.{name}", "must be",
                      "" if name == "actor_name" else "close_client")
    if mutation == "option":
        name, value = rng.choice([("retries", "x"), ("retries", -1), ("retries", True), ("max_retries", "ten"),
                                  ("throws", "ValueError"), ("throws", ["ValidationError"]), ("eta", "soon"),
                                  ("time_limit", 2**70), ("on_failure", 3), ("pipe_target", "x"),
                                  ("notify_shutdown", "yes"), ("min_backoff", 1.5)])
        valid["options"][name] = value
        return Pushed("structure", "billing", redis_id, encoded(valid), f"message.options.{name}", "must be",
                      "close_client")
    if mutation == "actor":
        valid["actor_name"] = rng.choice(["no_such_job", "close_client ", "Close_Client", "dramatiq", "x" * 99])
        return Pushed("structure", "billing", redis_id, encoded(valid), "message.actor_name",
                      "is not a job of this worker")
    if mutation == "queue":
        valid["queue_name"] = rng.choice(["emails", "billing.DQ", "nope", ""])
        return Pushed("structure", "billing", redis_id, encoded(valid), "message.queue_name",
                      "is not the queue the message was read from", "close_client")
    if mutation == "message_id":
        valid["message_id"] = rng.choice(["", "x" * 101, "id\x00", 42, None])
        return Pushed("structure", "billing", redis_id, encoded(valid), "message.message_id", "must be a string",
                      "close_client")
    if mutation == "extra":
        valid[rng.choice(["priority", "delay", "queue", "Args"])] = 1
        return Pushed("structure", "billing", redis_id, encoded(valid), "message",
                      "is not a field of a Dramatiq message", "close_client")
    del valid["options"]["redis_message_id"]
    return Pushed("structure", "billing", redis_id, encoded(valid), "message.options.redis_message_id",
                  "is missing", "close_client")


def hand_picked(ids: dict[str, int]) -> list[Pushed]:
    """The cases of issue 8, and the shapes Dramatiq itself chokes on."""
    c, inv = ids["client"], ids["invoice"]
    payment = {"invoice_id": inv, "amount": "1.00", "gateway": "stripe", "transaction_id": "ch_9"}
    out: list[Pushed] = []

    def job(kind: str, actor: str, kwargs: dict, field: str, reason: str, *, queue: str = "billing") -> None:
        redis_id = f"{kind}-{len(out)}-{uuid.uuid4()}"
        out.append(Pushed(kind, queue, redis_id, encoded(body(actor, kwargs, queue=queue, redis_id=redis_id)),
                          field, reason, actor))

    def raw(kind: str, payload: bytes, field: str, reason: str, actor: str = "", *, queue: str = "billing",
            redis_id: str | None = None) -> None:
        out.append(Pushed(kind, queue, redis_id or f"{kind}-{len(out)}-{uuid.uuid4()}", payload, field, reason,
                          actor))

    id_rule = f"at most {MAX_ID}"
    for value in (2**70, "9" * 400, "9" * 5000):
        job("id", "apply_payment", {**payment, "invoice_id": value}, "invoice_id", id_rule)
        job("id", "adjust_credit", {"client_id": value, "amount": "1.00", "description": "x"}, "client_id", id_rule)
        job("id", "create_invoice", {"client_id": value}, "client_id", id_rule)
        job("id", "close_client", {"client_id": value}, "client_id", id_rule)
        job("id", "deliver_email", {"email_id": value}, "email_id", id_rule, queue="emails")
    job("id", "deliver_emails", {"email_ids": [1, 2**70]}, "email_ids[1]", id_rule, queue="emails")
    job("id", "invoice_selected_items", {"client_id": c, "items": [{"type": "service", "id": "9" * 400}]},
        "items[0].id", id_rule)
    job("id", "relay_module_commands", {"older_than_seconds": 2**70}, "older_than_seconds", "from 0 to")
    job("text", "apply_payment", {**payment, "gateway": "str\x00ipe"}, "gateway", "U+0000")
    job("text", "apply_payment", {**payment, "transaction_id": "ch_\x00"}, "transaction_id", "U+0000")
    job("text", "send_client_email", {"client_id": c, "subject": "Hi", "body": "Line 1\n\tLine 2\x00"}, "body",
        "U+0000")
    job("text", "send_client_email", {"client_id": c, "subject": "Hi\r\nBcc: x@example.com", "body": "Hello"},
        "subject", "U+000D")

    template = body("close_client", {"client_id": c}, redis_id="")

    def shaped(kind: str, field: str, reason: str, actor: str = "close_client", **changes: Any) -> None:
        redis_id = f"{kind}-{len(out)}-{uuid.uuid4()}"
        message = {**template, "options": {"redis_message_id": redis_id}, "message_id": redis_id, **changes}
        raw(kind, encoded({k: v for k, v in message.items() if v is not ...}), field, reason, actor,
            redis_id=redis_id)

    raw("undecodable", b"\xff\xfe\x00 not UTF-8", "message", "is not UTF-8")
    raw("undecodable", b"not json", "message", "is not JSON")
    raw("undecodable", b"not json", "message", "is not JSON")  # the same payload twice: each dead-lettered
    raw("undecodable", b"", "message", "is not JSON")
    raw("undecodable", b"[" * 100_000, "message", "is not JSON")
    raw("undecodable", b'{"queue_name": "billing", "kwargs": {"client_id": ' + b"9" * 5000 + b"}}", "message",
        "is not JSON")
    raw("undecodable", b"[1, 2, 3]", "message", "an array, not a JSON object")
    raw("undecodable", b'"close_client"', "message", "a string, not a JSON object")
    raw("undecodable", b"\xff garbage in the emails queue", "message", "is not UTF-8", queue="emails")
    shaped("structure", "message.actor_name", "is missing", "", actor_name=...)
    shaped("structure", "message.args", "must be an array", args={"client_id": c})
    shaped("structure", "message.kwargs", "must be an object", kwargs=[c])
    shaped("structure", "message.options", "must be an object", options=[])
    shaped("structure", "message.actor_name", "is not a job of this worker", "", actor_name="no_such_job")
    shaped("structure", "message.actor_name", "internal", "", actor_name="refuse_undecodable_message")
    shaped("structure", "message.queue_name", "is not the queue", queue_name="emails")
    shaped("structure", "message.options.retries", "must be an integer", options={"retries": "x"})
    shaped("structure", "message.options.throws", "must be null", options={"throws": "ValueError"})
    shaped("structure", "message.options.max_retries", "must be", options={"max_retries": "ten"})
    shaped("structure", "message.options.redis_message_id", "is missing", options={})
    return out


def valid_messages(rng: random.Random, ids: dict[str, int], count: int) -> list[Pushed]:
    """Jobs with an effect to count and no email: a credit line, or a Draft invoice."""
    out = []
    for n in range(count):
        redis_id = f"valid-{n}-{uuid.uuid4()}"
        if rng.random() < 0.5:
            message = body("adjust_credit", {"client_id": ids["client"], "amount": "1.00",
                                             "description": f"fuzz valid {n}"}, redis_id=redis_id)
        else:
            message = body("create_invoice", {"client_id": ids["other_client"]}, redis_id=redis_id)
        out.append(Pushed("valid", "billing", redis_id, encoded(message), actor=message["actor_name"]))
    return out


def dead_lettered(client, queue: str) -> dict[str, bytes]:
    """The raw payloads in ``<ns>:<queue>.XQ``, by Redis id."""
    ids = [i.decode() for i in client.zrange(f"{NAMESPACE}:{queue}.XQ", 0, -1)]
    bodies = client.hmget(f"{NAMESPACE}:{queue}.XQ.msgs", ids) if ids else []
    return dict(zip(ids, bodies, strict=True))


COUNTED_TABLES = ("clients", "invoices", "invoice_items", "transactions", "credit_history", "email_outbox",
                  "email_log", "module_commands", "password_reset_tokens", "client_exports", "client_merges",
                  "email_templates", "job_receipts", "daily_runs")


def table_counts(engine) -> dict[str, int]:
    return {t: scalar(engine, f"SELECT count(*) FROM {t}") for t in COUNTED_TABLES}


def test_malformed_messages_are_refused_at_once_and_good_ones_run(start_worker, pg_engine, redis_client):
    # Given two clients, an unpaid invoice
    with Session(pg_engine, expire_on_commit=False) as s:
        client, other = f.client(s), f.client(s)
        invoice = Invoice(client_id=client.id, currency_id=client.currency_id, number=1, date_created=date.today(),
                          date_due=date.today(), total=10, balance_due=10)
        s.add(invoice)
        s.commit()
        ids = {"client": client.id, "other_client": other.id, "invoice": invoice.id}
    before = table_counts(pg_engine)

    # When random and hand-picked bad messages, shuffled among valid ones, wait in Redis (one
    # garbage payload also in the delay queue) before a worker starts
    rng = random.Random(SEED)
    bad = hand_picked(ids) + [random_bad(rng, ids, n) for n in range(RANDOM_BAD)]
    good = valid_messages(rng, ids, VALID)
    messages = bad + good
    rng.shuffle(messages)
    delayed = Pushed("undecodable", "billing.DQ", f"delayed-{uuid.uuid4()}", b"\x00\x01 garbage", "message",
                     "is not JSON")
    messages.append(delayed)
    bad.append(delayed)
    push_all(redis_client, messages)
    started = time.monotonic()
    worker = start_worker()

    # Then the worker gets through all of them, within a bound
    wait_until_idle(redis_client, timeout=DONE_WITHIN)
    elapsed = time.monotonic() - started

    # ... every valid message ran: one credit line per adjust_credit, one Draft per create_invoice
    kinds = Counter(m.actor for m in good)
    after = table_counts(pg_engine)
    assert after["credit_history"] - before["credit_history"] == kinds["adjust_credit"]
    assert after["invoices"] - before["invoices"] == kinds["create_invoice"]
    assert after["job_receipts"] - before["job_receipts"] == len(good)
    assert scalar(pg_engine, "SELECT credit_balance FROM clients WHERE id = :i", i=ids["client"]) == Decimal(
        kinds["adjust_credit"])
    # ... and no bad one changed anything: the other tables are as they were
    assert {t: n for t, n in after.items() if t not in ("credit_history", "invoices", "job_receipts")} == {
        t: n for t, n in before.items() if t not in ("credit_history", "invoices", "job_receipts")}
    assert scalar(pg_engine, "SELECT balance_due FROM invoices WHERE id = :i", i=ids["invoice"]) == Decimal("10.00")
    assert rows(pg_engine, "SELECT DISTINCT status FROM clients") == [("Active",)]

    # ... each bad message is dead-lettered as it was pushed (one attempt: a retry would carry
    # options.retries), with one job_failures row naming the field and the rule
    dead = {**dead_lettered(redis_client, "billing"), **dead_lettered(redis_client, "emails")}
    failures = {}
    for row in rows(pg_engine, "SELECT message_id, actor, field, reason, error FROM job_failures"):
        assert row.message_id not in failures, f"two job_failures rows for message {row.message_id}"
        failures[row.message_id] = row
    problems = []
    for m in bad:
        row = failures.get(m.redis_id)
        if dead.get(m.redis_id) != m.payload:
            problems.append(f"{m.kind} {m.payload[:80]!r}: not dead-lettered as pushed")
        elif row is None:
            problems.append(f"{m.kind} {m.payload[:80]!r}: no job_failures row")
        elif row.field != m.field or m.reason not in row.reason:
            problems.append(f"{m.kind} {m.payload[:80]!r}: recorded as {row.field!r}: {row.reason!r}, expected "
                            f"{m.field!r} ... {m.reason!r}")
        elif row.actor != (m.actor or "refuse_undecodable_message"):
            problems.append(f"{m.kind} {m.payload[:80]!r}: recorded for actor {row.actor!r}")
        elif row.error != ("BadMessage" if m.kind in ("undecodable", "structure") else "ValidationError"):
            problems.append(f"{m.kind} {m.payload[:80]!r}: recorded as error {row.error!r}")
    assert problems == [], f"{len(problems)} of {len(bad)} bad messages were not refused as expected"
    assert len(failures) == len(bad) and len(dead) == len(bad), "nothing else failed, nothing else died"
    assert not any(m.redis_id in dead for m in good)

    # ... nothing is left in Redis, no consumer restarted, nothing was retried
    assert redis_client.keys(f"{NAMESPACE}:__acks__.*") == []
    log = worker.log()
    assert "Retrying message" not in log
    assert "Consumer encountered" not in log and "Restarting consumer" not in log
    print(f"\nfuzz: {len(bad)} bad ({dict(Counter(m.kind for m in bad))}), {len(good)} valid, "
          f"done in {elapsed:.1f} s")
