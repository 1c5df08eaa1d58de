"""``billingworker outbox list|resend``: the emails that were not delivered, and their resend
(domain/messaging/outbox_resend.py: back to queued under row locks, delivery enqueued after the commit)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy.orm import Session

from billingworker.actors import broker
from billingworker.adapters.mailer import MemoryMailer
from billingworker.db import session_factory
from billingworker.domain.messaging.delivery import deliver_emails
from billingworker.domain.messaging.outbox_resend import resend_emails
from billingworker.domain.models import OutboxEmail
from billingworker.ops.outbox import resend
from tests.factories import a_client, outbox_row, status_of

from .conftest import cli

NOW = datetime.now(UTC)


@pytest.fixture
def enqueued(monkeypatch, engine) -> list[tuple[str, list, dict]]:
    """Messages the commands send (actor, email ids), each with the status its rows had in the
    database at that moment, read on a connection of its own: after the commit, they are queued."""
    sent: list[tuple[str, list, dict]] = []

    def enqueue(message, *, delay=None):
        [ids] = message.args  # deliver_email(email_id), deliver_emails(email_ids)
        ids = ids if isinstance(ids, list) else [ids]
        sent.append((message.actor_name, ids, {i: status_of(engine, i) for i in ids}))
        return message

    monkeypatch.setattr(broker, "enqueue", enqueue)
    return sent


def test_list_shows_failed_and_skipped_with_why_by_default(engine):
    # Given: a failed email, a skipped one, a sent one, and one of another client
    ada = a_client(engine)
    bob = a_client(engine, "bob@example.org")
    failed = outbox_row(engine, ada, status="failed", error="SMTPRecipientsRefused: 550 no such user password=x1")
    skipped = outbox_row(engine, ada, status="skipped", template="invoice_payment_reminder")
    outbox_row(engine, ada, status="sent")
    other = outbox_row(engine, bob, status="failed", error="ValidationError: no address")

    # When
    as_json = cli(engine, "outbox", "list", "--json")
    screen = cli(engine, "outbox", "list")
    of_ada = cli(engine, "outbox", "list", "--client", str(ada), "--status", "failed", "--json")
    sent = cli(engine, "outbox", "list", "--status", "sent", "--json")

    # Then
    assert as_json.exit_code == 0, as_json.output
    data = json.loads(as_json.output)
    assert data["counts"] == {"queued": 0, "sending": 0, "sent": 1, "failed": 2, "skipped": 1}
    rows = {r["id"]: r for r in data["emails"]}
    assert set(rows) == {failed, skipped, other}
    assert rows[failed]["to"] == "ad***@example.com" and rows[failed]["attempts"] == 3
    assert rows[failed]["error"] == "SMTPRecipientsRefused: 550 no such user password=***"
    assert rows[skipped]["error"].startswith("no longer wanted when its turn came")
    assert [r["id"] for r in json.loads(of_ada.output)["emails"]] == [failed]
    assert [r["status"] for r in json.loads(sent.output)["emails"]] == ["sent"]
    assert screen.exit_code == 0, screen.output
    assert screen.output.startswith("outbox: queued 0, sending 0, sent 1, failed 2, skipped 1")
    line = next(line for line in screen.output.splitlines() if line.split()[:1] == [str(failed)])
    assert f"{ada}" in line and "ad***@example.com" in line and "client_signup" in line and "failed" in line
    assert "1h 00m ago" in line and "x1" not in screen.output


def test_list_of_an_empty_outbox(engine):
    result = cli(engine, "outbox", "list")

    assert result.exit_code == 0
    assert "no failed or skipped email" in result.output


def test_resend_puts_failed_and_skipped_back_and_enqueues_after_the_commit(engine, enqueued):
    ada = a_client(engine)
    failed = outbox_row(engine, ada, status="failed", error="SMTP down")
    skipped = outbox_row(engine, ada, status="skipped")
    sent = outbox_row(engine, ada, status="sent")

    result = cli(engine, "outbox", "resend", str(failed), str(skipped), str(sent))

    assert result.exit_code == 0, result.output
    assert f"resent 2 email(s): {failed}, {skipped}" in result.output
    assert f"email {sent}: not resent (it is sent)" in result.output
    assert (status_of(engine, failed), status_of(engine, skipped), status_of(engine, sent)) == (
        "queued", "queued", "sent")
    # one delivery message for both, sent when the rows were already committed as queued
    assert enqueued == [("deliver_emails", [failed, skipped], {failed: "queued", skipped: "queued"})]


def test_resend_all_failed_of_a_client(engine, enqueued):
    ada, bob = a_client(engine), a_client(engine, "bob@example.org")
    mine = [outbox_row(engine, ada, status="failed", error="x") for _ in range(2)]
    skipped = outbox_row(engine, ada, status="skipped")
    theirs = outbox_row(engine, bob, status="failed", error="x")

    result = cli(engine, "outbox", "resend", "--all-failed", "--client", str(ada))
    again = cli(engine, "outbox", "resend", "--all-failed", "--client", str(ada))

    assert result.exit_code == 0, result.output
    assert [status_of(engine, i) for i in mine] == ["queued", "queued"]
    assert status_of(engine, skipped) == "skipped" and status_of(engine, theirs) == "failed"
    assert [(actor, ids) for actor, ids, _ in enqueued] == [("deliver_emails", mine)]
    assert again.output.strip() == "no failed email to resend"


def test_resend_refuses_bad_input_without_a_traceback(engine, enqueued):
    neither = cli(engine, "outbox", "resend")
    both = cli(engine, "outbox", "resend", "1", "--all-failed")
    missing = cli(engine, "outbox", "resend", "999")
    word = cli(engine, "outbox", "resend", "abc")

    assert neither.exit_code == 2 and "give email ids or --all-failed" in neither.output
    assert both.exit_code == 2
    assert missing.exit_code == 1 and "email 999: not resent (no such email)" in missing.output
    assert word.exit_code == 2 and "'abc' is not a valid integer" in word.output
    assert enqueued == []


# --- two operators at once, and a resend racing a delivery (PostgreSQL row locks) ------------------

def wait_for_lock_waiter(engine: Engine) -> None:
    """Wait until a session of this database waits for a row lock (the other thread is blocked)."""
    deadline = time.monotonic() + 30
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                        "AND wait_event_type = 'Lock'")).scalar_one()
            if waiting:
                return
            time.sleep(0.05)
    pytest.fail("the second transaction never waited for the row lock")


def test_two_operators_resending_one_email_send_it_once(pg_engine):
    # Given a failed email, and operator A's resend holding its row lock (not committed yet)
    email = outbox_row(pg_engine, a_client(pg_engine), status="failed", error="SMTP down")
    sends: list[tuple[int, ...]] = []
    session_a = session_factory(pg_engine)()
    done_a = resend_emails(session_a, [email], now=NOW)

    # When operator B resends it meanwhile (it waits for A's lock), then A commits and sends
    result_b: list = []
    b = threading.Thread(target=lambda: result_b.append(
        resend(pg_engine, now=NOW, email_ids=[email], send=lambda ids: sends.append(tuple(ids)))))
    b.start()
    wait_for_lock_waiter(pg_engine)
    session_a.commit()
    session_a.close()
    sends.append(done_a.queued)
    b.join(30)

    # Then one delivery message only: B found it queued and left it
    assert done_a.queued == (email,)
    [done_b] = result_b
    assert done_b.queued == () and done_b.left == {email: "queued"}
    assert [ids for ids in sends if ids] == [(email,)]


def test_a_resend_racing_a_delivery_never_sends_twice(pg_engine):
    # Given a failed email whose resend holds the row lock
    email = outbox_row(pg_engine, a_client(pg_engine), status="failed", error="SMTP down")
    mailer = MemoryMailer()
    session_a = session_factory(pg_engine)()
    resend_emails(session_a, [email], now=NOW)

    # When a worker delivers it meanwhile (a delivery message of an earlier resend): it waits
    delivered: list = []

    def deliver() -> None:
        with session_factory(pg_engine)() as session:
            delivered.append(deliver_emails(session, [email], mailer, sender="billing@example.com", now=NOW))

    worker = threading.Thread(target=deliver)
    worker.start()
    wait_for_lock_waiter(pg_engine)
    session_a.commit()
    session_a.close()
    worker.join(30)

    # Then it is sent once; a resend of the sent email changes nothing and enqueues nothing
    assert [r.status for r in delivered[0].results] == ["sent"]
    sends: list = []
    late = resend(pg_engine, now=NOW, email_ids=[email], send=lambda ids: sends.append(list(ids)))
    assert late.queued == () and late.left == {email: "sent"} and sends == [[]]
    assert len(mailer.sent) == 1
    with Session(pg_engine) as session:
        assert session.scalar(select(OutboxEmail.status).where(OutboxEmail.id == email)) == "sent"
