"""What an admin's actions do, and that each is written to the audit log: unpark, requeue (with a
corrected argument), purge (one, all), resend an email."""

from __future__ import annotations

import html
import json
import re
from datetime import UTC, datetime

from dramatiq import Message
from sqlalchemy import text

from billingworker.db import create_db_engine, unit_of_work
from billingworker.domain.models import JobFailure
from billingworker.migrate import upgrade_engine

from .conftest import audit_rows, signed_in
from .seed import dead_ids, dead_letter, email_status, is_parked, seed


def upto(client, queue: str = "billing") -> str:
    """The newest death the Dead letters page shows for ``queue`` (its forms' ``upto``)."""
    page = client.get("/dead-letters").text
    match = re.search(rf'action="/dead-letters/{queue}/purge-all".*?name="upto" value="(\d+)"', page, re.S)
    assert match, "no purge-all form"
    return match.group(1)


def flashes(client, path: str) -> list[str]:
    return [html.unescape(t) for t in re.findall(r'class="flash[^"]*" role="status">([^<]*)<', client.get(path).text)]


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

    shown = upto(client)
    client.post("/dead-letters/billing/purge-all", data={"csrf_token": token, "upto": shown})
    assert set(dead_ids(redis_client)) == {second, third}
    client.post("/dead-letters/billing/purge-all", data={"csrf_token": token, "confirm": "yes", "upto": shown})
    assert dead_ids(redis_client) == []
    assert [(r.action, r.outcome) for r in audit_rows(engine) if r.action != "sign_in"] == [
        ("purge", "ok"), ("purge_all", "failed"), ("purge_all", "ok")]


def test_requeue_all_of_a_queue(engine, console_client, redis_broker, redis_client):
    letters = [dead_letter(redis_broker) for _ in range(2)]
    client = console_client(engine)
    token = signed_in(client)

    client.post("/dead-letters/billing/requeue-all", data={"csrf_token": token, "upto": upto(client)})

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


def test_purge_all_drops_only_the_letters_the_page_showed(engine, console_client, redis_broker, redis_client):
    # Given the page showing two dead letters ("drop all 2")
    shown = [dead_letter(redis_broker) for _ in range(2)]
    client = console_client(engine)
    token = signed_in(client)
    seen = upto(client)
    assert "drop all 2 for good" in client.get("/dead-letters").text
    # ... and a third that dies after the page was shown (its death a millisecond after the newest shown)
    later = dead_letter(redis_broker)
    redis_client.zadd("dramatiq:billing.XQ", {later: int(seen) + 1})

    # When the operator ticks "drop all 2" and purges
    client.post("/dead-letters/billing/purge-all", data={"csrf_token": token, "confirm": "yes", "upto": seen})

    # Then the two shown are gone, the one the operator never saw is kept, and she is told
    assert dead_ids(redis_client) == [later]
    said = flashes(client, "/dead-letters")
    assert said == ["purged 2 dead letters of billing; 1 that died after the page was shown left alone "
                    "(reload to see them)"]
    assert later not in shown
    # A form that does not say what it showed (an old page) purges nothing
    client.post("/dead-letters/billing/purge-all", data={"csrf_token": token, "confirm": "yes"})
    assert dead_ids(redis_client) == [later]
    assert [r.outcome for r in audit_rows(engine, "purge_all")] == ["ok", "failed"]


def test_requeue_all_asks_before_requeueing_letters_that_died_of_bad_input(engine, console_client, redis_broker,
                                                                           redis_client):
    # Given a queue with a letter refused for bad input (job_failures says why) and a plain one
    refused_msg = Message(queue_name="billing", actor_name="generate_due_invoices", args=(),
                          kwargs={"client_id": 999999}, options={})
    refused = dead_letter_of(redis_broker, refused_msg)
    with unit_of_work(engine) as session:
        session.add(JobFailure(actor="generate_due_invoices", message_id=refused_msg.message_id, error="NotFound",
                               field="client_id", reason="999999 client", created_at=datetime.now(UTC)))
        session.commit()
    plain = dead_letter(redis_broker)
    client = console_client(engine)
    token = signed_in(client)
    page = client.get("/dead-letters").text
    assert "1 shown died of bad input and will die again unless corrected" in page

    # When the operator requeues all without ticking the warning's box
    client.post("/dead-letters/billing/requeue-all", data={"csrf_token": token, "upto": upto(client)})

    # Then nothing is requeued and she is told why
    assert set(dead_ids(redis_client)) == {refused, plain} and queued(redis_client) == []
    assert "1 of the 2 dead letters died of bad input and would die again" in client.get("/dead-letters").text

    # With the box ticked both go, and the flash repeats the warning
    client.post("/dead-letters/billing/requeue-all", data={"csrf_token": token, "upto": upto(client),
                                                           "bad_input": "yes"})
    assert dead_ids(redis_client) == [] and len(queued(redis_client)) == 2
    assert flashes(client, "/dead-letters") == [
        "requeued 2 dead letters to billing (1 died of bad input and will die again unless their cause is fixed)"]
    assert [r.outcome for r in audit_rows(engine, "requeue_all")] == ["failed", "ok"]


HUGE = "99999999999999999999"


def test_actions_on_ids_beyond_any_row_are_failed_and_audited(engine, console_client):
    client = console_client(engine)
    token = signed_in(client)

    unpark = client.post(f"/parked/{HUGE}/unpark", data={"csrf_token": token})
    resend_one = client.post(f"/outbox/{HUGE}/resend", data={"csrf_token": token})

    assert unpark.status_code == resend_one.status_code == 303
    assert [(r.action, r.outcome, r.detail) for r in audit_rows(engine) if r.action != "sign_in"] == [
        ("unpark", "failed", f"there is no client {HUGE}"), ("resend", "failed", f"there is no email {HUGE}")]
    assert f"there is no email {HUGE}" in client.get("/outbox").text


def test_corrections_that_cannot_be_read_are_failed_and_audited(engine, console_client, redis_broker, redis_client):
    letter = dead_letter(redis_broker, "generate_due_invoices", client_id=7)
    client = console_client(engine)
    token = signed_in(client)

    for value in ("[" * 100_000, "9" * 5000):
        response = client.post(f"/dead-letters/billing/{letter}/requeue",
                               data={"csrf_token": token, "set": f"client_id={value}"})
        assert response.status_code == 303

    assert dead_ids(redis_client) == [letter] and queued(redis_client) == []
    assert [r.outcome for r in audit_rows(engine, "requeue")] == ["failed", "failed"]


def test_an_unexpected_error_in_an_action_is_audited_as_failed(tmp_path, console_client, redis_broker, redis_client,
                                                              caplog):
    # Given a database whose job_failures table is missing (an error no action expects)
    engine = create_db_engine(f"sqlite:///{tmp_path / 'broken.db'}")
    upgrade_engine(engine)
    with engine.begin() as conn:
        conn.execute(text("DROP TABLE job_failures"))
    letter = dead_letter(redis_broker)
    client = console_client(engine)
    token = signed_in(client)

    # When the operator requeues all (which reads job_failures first)
    response = client.post("/dead-letters/billing/requeue-all", data={"csrf_token": token, "upto": "99999999999999"})

    # Then she gets the page back, not a 500, and the audit log says it failed
    assert response.status_code == 303
    assert dead_ids(redis_client) == [letter]
    (row,) = audit_rows(engine, "requeue_all")
    assert row.outcome == "failed" and "unexpected OperationalError" in row.detail
    assert "unexpected OperationalError" in client.get("/audit").text
    assert "console action requeue_all billing failed" in caplog.text
    engine.dispose()
