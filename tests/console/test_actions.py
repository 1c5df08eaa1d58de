"""What an admin's actions do, and that each is written to the audit log: unpark, requeue (with a
corrected argument), purge (one, all), resend an email."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from dramatiq import Message

from billingworker.db import unit_of_work
from billingworker.domain.models import JobFailure

from .conftest import audit_rows, signed_in
from .seed import dead_ids, dead_letter, email_status, is_parked, seed


def queued(redis_client, queue: str = "billing") -> list[dict]:
    ids = redis_client.lrange(f"dramatiq:{queue}", 0, -1)
    return [json.loads(redis_client.hget(f"dramatiq:{queue}.msgs", i)) for i in ids]


def test_unpark_lets_the_daily_run_take_the_client_again_and_is_audited(engine, console_client, redis_broker):
    seeded = seed(engine, redis_broker)
    client = console_client(engine)
    token = signed_in(client)

    response = client.post(f"/parked/{seeded.client_id}/unpark", data={"csrf_token": token})

    assert response.status_code == 303 and response.headers["location"] == "/parked"
    assert not is_parked(engine, seeded.client_id)
    page = client.get("/parked").text
    assert f"client {seeded.client_id} unparked" in page and "No parked client." in page
    (row,) = audit_rows(engine, "unpark")
    assert (row.username, row.role, row.target, row.outcome) == ("alice", "admin", f"client {seeded.client_id}", "ok")
    # A second unpark says it was not parked, audited as failed
    client.post(f"/parked/{seeded.client_id}/unpark", data={"csrf_token": token})
    assert [r.outcome for r in audit_rows(engine, "unpark")] == ["ok", "failed"]


def test_requeue_with_a_corrected_argument_sends_the_fixed_message_back(engine, console_client, redis_broker,
                                                                        redis_client):
    # Given a generate_due_invoices refused for a client that does not exist
    msg = Message(queue_name="billing", actor_name="generate_due_invoices", args=(),
                  kwargs={"client_id": 999999, "as_of": "2026-01-15"}, options={})
    letter = dead_letter_of(redis_broker, msg)
    with unit_of_work(engine) as session:
        session.add(JobFailure(actor="generate_due_invoices", message_id=msg.message_id, error="NotFound",
                               field="client_id", reason="999999 client", created_at=datetime.now(UTC)))
        session.commit()
    client = console_client(engine)
    token = signed_in(client)
    page = client.get("/dead-letters").text
    assert "refused:" in page and "999999 client" in page

    # When the operator corrects client_id and requeues
    response = client.post(f"/dead-letters/billing/{letter}/requeue",
                           data={"csrf_token": token, "set": "client_id=42\n"})

    # Then the message is back in its queue with the corrected argument, the same message id
    assert response.status_code == 303
    assert dead_ids(redis_client) == []
    (back,) = queued(redis_client)
    assert back["kwargs"] == {"client_id": 42, "as_of": "2026-01-15"}
    assert back["message_id"] == msg.message_id and back["options"]["retries"] == 0
    assert "with client_id corrected" in client.get("/dead-letters").text
    (row,) = audit_rows(engine, "requeue")
    assert row.outcome == "ok" and row.target == f"billing/{letter}" and "set client_id=42" in row.detail


def dead_letter_of(broker, msg: Message) -> str:
    from tests.ops.conftest import kill

    return kill(broker, msg)


def test_requeue_unchanged_of_a_refused_message_warns_it_will_die_again(engine, console_client, redis_broker):
    msg = Message(queue_name="billing", actor_name="apply_payment", args=(), kwargs={"invoice_id": "abc"}, options={})
    letter = dead_letter_of(redis_broker, msg)
    with unit_of_work(engine) as session:
        session.add(JobFailure(actor="apply_payment", message_id=msg.message_id, error="ValidationError",
                               field="invoice_id", reason="'abc' must be an integer", created_at=datetime.now(UTC)))
        session.commit()
    client = console_client(engine)
    token = signed_in(client)

    client.post(f"/dead-letters/billing/{letter}/requeue", data={"csrf_token": token, "set": ""})

    assert "will die again" in client.get("/dead-letters").text


def test_a_malformed_correction_is_refused_and_the_letter_stays(engine, console_client, redis_broker, redis_client):
    letter = dead_letter(redis_broker)
    client = console_client(engine)
    token = signed_in(client)

    client.post(f"/dead-letters/billing/{letter}/requeue", data={"csrf_token": token, "set": "no equals sign"})

    assert dead_ids(redis_client) == [letter] and queued(redis_client) == []
    assert "is not NAME=VALUE" in client.get("/dead-letters").text
    assert [r.outcome for r in audit_rows(engine, "requeue")] == ["failed"]


def test_purge_one_then_purge_all_needs_the_confirmation(engine, console_client, redis_broker, redis_client):
    first, second, third = (dead_letter(redis_broker) for _ in range(3))
    client = console_client(engine)
    token = signed_in(client)

    client.post(f"/dead-letters/billing/{first}/purge", data={"csrf_token": token})
    assert set(dead_ids(redis_client)) == {second, third}  # (two deaths in one ms sort by id)

    client.post("/dead-letters/billing/purge-all", data={"csrf_token": token})
    assert set(dead_ids(redis_client)) == {second, third}
    client.post("/dead-letters/billing/purge-all", data={"csrf_token": token, "confirm": "yes"})
    assert dead_ids(redis_client) == []
    assert [(r.action, r.outcome) for r in audit_rows(engine) if r.action != "sign_in"] == [
        ("purge", "ok"), ("purge_all", "failed"), ("purge_all", "ok")]


def test_requeue_all_of_a_queue(engine, console_client, redis_broker, redis_client):
    letters = [dead_letter(redis_broker) for _ in range(2)]
    client = console_client(engine)
    token = signed_in(client)

    client.post("/dead-letters/billing/requeue-all", data={"csrf_token": token})

    assert dead_ids(redis_client) == [] and len(queued(redis_client)) == len(letters)
    assert "requeued 2 dead letters to billing" in client.get("/dead-letters").text


def test_resend_puts_a_failed_email_back_in_the_outbox(engine, console_client, redis_broker):
    seeded = seed(engine, redis_broker)
    client = console_client(engine)
    token = signed_in(client)
    assert "SMTP 550 mailbox unavailable" in client.get("/outbox").text

    client.post(f"/outbox/{seeded.email_id}/resend", data={"csrf_token": token})

    assert email_status(engine, seeded.email_id) == "queued"
    (row,) = audit_rows(engine, "resend")
    assert row.outcome == "ok" and row.target == f"email {seeded.email_id}"


def test_a_correction_the_job_would_refuse_is_not_requeued(engine, console_client, redis_broker, redis_client):
    letter = dead_letter(redis_broker, "apply_payment", invoice_id=7, amount="1.00")
    client = console_client(engine)
    token = signed_in(client)

    client.post(f"/dead-letters/billing/{letter}/requeue", data={"csrf_token": token, "set": "invoce_id=8"})

    assert dead_ids(redis_client) == [letter] and queued(redis_client) == []
    assert "invoce_id" in client.get("/dead-letters").text
    (row,) = audit_rows(engine, "requeue")
    assert row.outcome == "failed" and "invoce_id" in row.detail
