"""Delivering outbox emails once (SPEC §14), on SQLite and PostgreSQL."""

from __future__ import annotations

import smtplib
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import select

from billingworker.adapters.mailer import MemoryMailer
from billingworker.db import session_factory
from billingworker.domain.errors import ValidationError
from billingworker.domain.messaging.delivery import (
    CLAIM_TIMEOUT,
    deliver_email,
    deliver_emails,
    message_id_for,
    pending_email_ids,
    record_delivery_failure,
)
from billingworker.domain.models import Client, Contact, EmailLog, OutboxEmail
from tests import factories
from tests.factories import DELIVERY_NOW as NOW
from tests.factories import SENDER, invoice_email


def same_instant(stored: datetime | None, expected: datetime) -> bool:
    """SQLite gives timestamps back naive (in UTC), PostgreSQL aware."""
    assert stored is not None
    return (stored if stored.tzinfo else stored.replace(tzinfo=UTC)) == expected


class BrokenMailer:
    def __init__(self) -> None:
        self.calls = 0

    def send(self, message: EmailMessage) -> None:
        self.calls += 1
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")


def test_delivers_once_and_logs_it(session):
    # Given a queued invoice email, with an invoice contact
    outbox = invoice_email(session)
    session.add(Contact(client_id=outbox.client_id, email="accounts@example.com", invoice_emails=True))
    session.commit()
    mailer = MemoryMailer()

    # When it is delivered
    result = deliver_email(session, outbox.id, mailer, sender=SENDER, now=NOW)
    session.commit()

    # Then it was sent once, with the stable Message-ID, and logged
    assert result.status == "sent"
    assert result.message_id == f"<outbox-{outbox.id}.billingworker@acme.test>"
    assert result.to == ("ada@example.com",) and result.cc == ("accounts@example.com",)
    assert len(mailer.sent) == 1
    sent = mailer.sent[0]
    assert sent["Message-ID"] == result.message_id
    assert sent["To"] == "ada@example.com" and sent["Cc"] == "accounts@example.com"
    assert sent["From"] == SENDER
    assert sent["Subject"].startswith("Invoice #")

    session.refresh(outbox)
    assert outbox.status == "sent"
    assert same_instant(outbox.sent_at, NOW)
    logs = session.scalars(select(EmailLog)).all()
    assert len(logs) == 1
    log = logs[0]
    assert log.id == result.log_id
    assert (log.client_id, log.outbox_id, log.template) == (outbox.client_id, outbox.id, "invoice_created")
    assert log.subject == sent["Subject"]
    assert "Dear Ada," in log.body_text and "<p>Dear Ada,</p>" in log.body_html
    assert (log.to_address, log.cc) == ("ada@example.com", "accounts@example.com")
    assert same_instant(log.sent_at, NOW)

    # And a second delivery of the same id sends nothing
    again = deliver_email(session, outbox.id, mailer, sender=SENDER, now=NOW + timedelta(minutes=5))
    session.commit()
    assert again.status == "already_sent"
    assert len(mailer.sent) == 1
    assert len(session.scalars(select(EmailLog)).all()) == 1


def test_client_comes_from_the_invoice_when_the_row_has_none(session):
    outbox = invoice_email(session, client_id_on_row=False)
    result = deliver_email(session, outbox.id, MemoryMailer(), sender=SENDER, now=NOW)
    log = session.get(EmailLog, result.log_id)
    assert log is not None and log.client_id is not None
    assert session.get(Client, log.client_id).email == "ada@example.com"


def test_unknown_id_is_missing(session):
    mailer = MemoryMailer()
    assert deliver_email(session, 424242, mailer, sender=SENDER, now=NOW).status == "missing"
    assert mailer.sent == []


def test_a_refused_send_is_given_back_and_counted(engine, session):
    # Given a queued email and a mail server that hangs up
    outbox = invoice_email(session)
    session.commit()
    email_id = outbox.id
    broken = BrokenMailer()

    # When delivery fails, the claim is given back with the attempt counted
    result = deliver_email(session, email_id, broken, sender=SENDER, now=NOW)
    assert result.status == "retry" and "SMTPServerDisconnected" in result.error

    # Then the row is queued again, with the attempt counted, and nothing was logged
    session.refresh(outbox)
    assert (outbox.status, outbox.attempts) == ("queued", 1)
    assert outbox.last_error.startswith("SMTPServerDisconnected")
    assert session.scalars(select(EmailLog)).all() == []
    assert broken.calls == 1

    # And the next attempt sends it
    mailer = MemoryMailer()
    assert deliver_email(session, outbox.id, mailer, sender=SENDER, now=NOW).status == "sent"
    assert len(mailer.sent) == 1
    # A late failure report for a row sent meanwhile changes nothing
    assert record_delivery_failure(session, outbox.id, "late") == 1
    session.commit()
    session.refresh(outbox)
    assert (outbox.status, outbox.last_error[:22]) == ("sent", "SMTPServerDisconnected")


def test_giving_up_parks_the_email(session):
    outbox = invoice_email(session)
    assert record_delivery_failure(session, outbox.id, "x" * 5000, give_up=True) == 1
    session.commit()
    session.refresh(outbox)
    assert outbox.status == "failed" and len(outbox.last_error) == 2000
    assert pending_email_ids(session, now=datetime(2999, 1, 1, tzinfo=UTC), older_than=timedelta(0)) == []
    assert record_delivery_failure(session, 424242, "gone") is None


class Crash(BaseException):
    """A worker killed in the middle of delivery: nothing after this line of ours runs."""


class CrashingMailer(MemoryMailer):
    """Accepts messages; the worker dies right after the server accepted message number ``crash_at``."""

    def __init__(self, crash_at: int) -> None:
        super().__init__()
        self.crash_at = crash_at

    def send(self, message: EmailMessage) -> None:
        super().send(message)
        if len(self.sent) == self.crash_at:
            raise Crash()


def test_a_crash_repeats_only_the_email_in_flight(engine, session):
    # Given ten queued emails
    ids = [invoice_email(session).id for _ in range(10)]
    session.commit()

    # When the worker dies right after the server accepted the fourth one, before marking it
    mailer = CrashingMailer(crash_at=4)
    with pytest.raises(Crash):
        deliver_emails(session, ids, mailer, sender=SENDER, now=NOW)
    session.rollback()

    # Then the three before it are marked sent, the fourth and the rest are still claimed
    statuses = dict(session.execute(select(OutboxEmail.id, OutboxEmail.status).order_by(OutboxEmail.id)).all())
    assert [statuses[i] for i in ids] == ["sent"] * 3 + ["sending"] * 7

    # And a redelivery within the claim timeout leaves them to the (dead) claimant
    again = deliver_emails(session, ids, mailer, sender=SENDER, now=NOW + timedelta(seconds=30))
    assert again.count("in_flight") == 7 and again.count("already_sent") == 3

    # And once the claim timed out, the relay offers them and they go: only the fourth twice
    later = NOW + CLAIM_TIMEOUT + timedelta(seconds=1)
    assert pending_email_ids(session, now=later, older_than=timedelta(minutes=1)) == ids[3:]
    session.commit()
    assert deliver_emails(session, ids, mailer, sender=SENDER, now=later).count("sent") == 7
    sent = [m["Message-ID"] for m in mailer.sent]
    assert len(sent) == 11 and len(set(sent)) == 10
    assert sent.count(message_id_for(ids[3], SENDER)) == 2
    assert len(session.scalars(select(EmailLog)).all()) == 10


class WatchingMailer(MemoryMailer):
    """Reads, in a session of its own, the outbox as another process would at each send."""

    def __init__(self, engine) -> None:
        super().__init__()
        self.engine = engine
        self.seen: list[dict[int, str]] = []

    def send(self, message: EmailMessage) -> None:
        with session_factory(self.engine)() as other:
            self.seen.append(dict(other.execute(select(OutboxEmail.id, OutboxEmail.status)).all()))
            other.rollback()
        super().send(message)


def test_each_sent_mark_is_committed_before_the_next_message(engine, session):
    ids = [invoice_email(session).id for _ in range(3)]
    session.commit()
    session.close()  # SQLite: let the mailer's session read
    mailer = WatchingMailer(engine)
    with session_factory(engine)() as s:
        assert deliver_emails(s, ids, mailer, sender=SENDER, now=NOW).count("sent") == 3
    assert [[seen[i] for i in ids] for seen in mailer.seen] == [
        ["sending", "sending", "sending"], ["sent", "sending", "sending"], ["sent", "sent", "sending"]]


class SlowMemoryMailer(MemoryMailer):
    def send(self, message: EmailMessage) -> None:
        time.sleep(0.2)
        super().send(message)


def test_a_worker_never_sends_under_a_claim_it_may_have_lost(session):
    # Given a claim timeout of one second and a mail server that takes 0.2 s per message
    ids = [invoice_email(session).id for _ in range(6)]
    session.commit()
    mailer = SlowMemoryMailer()

    # When the batch takes longer than half the timeout
    batch = deliver_emails(session, ids, mailer, sender=SENDER, now=NOW, claim_timeout=timedelta(seconds=1))

    # Then it stops and gives the rest back (queued), to be sent by a later message
    assert 1 <= batch.count("sent") < 6
    assert batch.count("sent") + batch.count("retry") == 6
    assert len(mailer.sent) == batch.count("sent")
    back = session.scalars(select(OutboxEmail).where(OutboxEmail.id.in_(batch.retry_ids))).all()
    assert {(r.status, r.attempts) for r in back} == {("queued", 0)}


def test_a_render_error_sends_nothing(session):
    outbox = invoice_email(session, template="no_such_email")
    mailer = MemoryMailer()
    result = deliver_email(session, outbox.id, mailer, sender=SENDER, now=NOW)
    assert result.status == "failed" and "template" in result.error
    assert mailer.sent == []
    session.refresh(outbox)
    assert (outbox.status, outbox.attempts) == ("failed", 1)


def test_now_must_be_aware(session):
    outbox = invoice_email(session)
    with pytest.raises(ValidationError):
        deliver_email(session, outbox.id, MemoryMailer(), sender=SENDER, now=datetime(2024, 5, 1))


def test_message_id_is_stable_per_row():
    assert message_id_for(12, SENDER) == message_id_for(12, SENDER) == "<outbox-12.billingworker@acme.test>"
    assert message_id_for(13, SENDER) != message_id_for(12, SENDER)
    assert message_id_for(12, "no address") == "<outbox-12@billingworker>"


def test_pending_email_ids_are_queued_rows_whose_message_was_lost(session):
    client = factories.client(session)
    t0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)

    def row(minutes: int, status: str = "queued", **more) -> int:
        outbox = OutboxEmail(template="invoice_created", client_id=client.id, context="{}", status=status,
                             created_at=t0 + timedelta(minutes=minutes), **more)
        session.add(outbox)
        session.flush()
        return outbox.id

    late = row(30)
    early = row(10)
    row(5, status="sent")
    row(6, status="failed")
    too_new = row(60)
    dead_claim = row(1, status="sending", claimed_at=t0 + timedelta(minutes=20))
    live_claim = row(1, status="sending", claimed_at=t0 + timedelta(minutes=46))
    session.commit()

    now = t0 + timedelta(minutes=45)
    pending = pending_email_ids(session, now=now, older_than=timedelta(minutes=1), mark_relayed=False)
    assert pending == [late, early, dead_claim]
    assert too_new not in pending and live_claim not in pending
    # a range of clients (a batch's follow-ups) takes every undelivered row, however new
    assert pending_email_ids(session, now=now, older_than=timedelta(minutes=1), client_ids=(client.id, client.id),
                             mark_relayed=False) == [late, early, too_new, dead_claim]
    assert pending_email_ids(session, now=now, older_than=timedelta(minutes=1), mark_relayed=False,
                             after_id=late) == [early, dead_claim]
    # the relay pages through them, marking what it offered
    assert pending_email_ids(session, now=now, older_than=timedelta(minutes=1), limit=1) == [late]
    session.commit()
    # a row just re-offered is not offered again before ``older_than`` has passed
    assert pending_email_ids(session, now=now, older_than=timedelta(minutes=1)) == [early, dead_claim]
    session.commit()
    assert pending_email_ids(session, now=now + timedelta(seconds=30), older_than=timedelta(minutes=1)) == []
    # ...and, once relayed, not before ``older_than``, even for a range of clients
    assert pending_email_ids(session, now=now, older_than=timedelta(minutes=1), client_ids=(client.id, client.id),
                             mark_relayed=False) == [too_new]
    # the same instant in another time zone is the same moment
    from zoneinfo import ZoneInfo

    later = (now + timedelta(minutes=2)).astimezone(ZoneInfo("Australia/Sydney"))
    assert pending_email_ids(session, now=later, older_than=timedelta(minutes=1)) == [late, early, dead_claim]


class SlowMailer(MemoryMailer):
    """Holds the send long enough for the other worker to reach the lock."""

    def send(self, message: EmailMessage) -> None:
        time.sleep(0.3)
        super().send(message)


def test_two_concurrent_deliveries_send_once(engine, session):
    # Given one queued email, committed
    outbox = invoice_email(session)
    session.commit()
    email_id = outbox.id
    session.close()  # on SQLite an open transaction would hold the writer lock
    mailer = SlowMailer()
    barrier = threading.Barrier(2)
    results: list[str] = []
    errors: list[BaseException] = []
    make_session = session_factory(engine)

    def worker() -> None:
        try:
            with make_session() as s:
                barrier.wait(timeout=10)
                result = deliver_email(s, email_id, mailer, sender=SENDER, now=NOW)
                s.commit()
                results.append(result.status)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    # When two workers deliver it at the same moment
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    # Then exactly one sends it; the other finds it sent, or claimed by the first
    assert errors == []
    assert sorted(results) in (["already_sent", "sent"], ["in_flight", "sent"])
    assert len(mailer.sent) == 1
    with make_session() as s:
        assert len(s.scalars(select(EmailLog).where(EmailLog.outbox_id == email_id)).all()) == 1
