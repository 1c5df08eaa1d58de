"""Delivering outbox emails once (SPEC §14), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import smtplib
import threading
import time
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billingworker.adapters.mailer import MemoryMailer
from billingworker.db import session_factory
from billingworker.domain.delivery import (
    deliver_email,
    message_id_for,
    pending_email_ids,
    record_delivery_failure,
)
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import Client, Contact, EmailLog, OutboxEmail
from tests import factories
from tests.domain.test_emails import make_invoice

NOW = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
SENDER = "Acme Billing <billing@acme.test>"


def same_instant(stored: datetime | None, expected: datetime) -> bool:
    """SQLite gives timestamps back naive (in UTC), PostgreSQL aware."""
    assert stored is not None
    return (stored if stored.tzinfo else stored.replace(tzinfo=UTC)) == expected


def invoice_email(session: Session, *, client: Client | None = None, template: str = "invoice_created",
                  client_id_on_row: bool = True) -> OutboxEmail:
    client = client or factories.client(session, first_name="Ada", email="ada@example.com")
    invoice = make_invoice(session, client)
    outbox = OutboxEmail(template=template, client_id=client.id if client_id_on_row else None,
                         context=json.dumps({"invoice_id": invoice.id}),
                         dedupe_key=f"{template}:{invoice.id}")
    session.add(outbox)
    session.flush()
    return outbox


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


def test_a_failed_send_is_rolled_back_and_recorded(engine, session):
    # Given a queued email and a mail server that hangs up
    outbox = invoice_email(session)
    session.commit()
    # Keep the id as an int: after a rollback, reading outbox.id would reload the row and, on
    # SQLite, open a transaction that holds the writer lock (as an actor must not do either).
    email_id = outbox.id
    broken = BrokenMailer()

    # When delivery fails, the caller rolls back and records the failure in a fresh transaction
    with pytest.raises(smtplib.SMTPServerDisconnected):
        deliver_email(session, email_id, broken, sender=SENDER, now=NOW)
    session.rollback()
    with session_factory(engine)() as fresh:
        assert record_delivery_failure(fresh, email_id, "SMTPServerDisconnected: closed") == 1
        fresh.commit()

    # Then the row is still queued, with the attempt counted, and nothing was logged
    session.refresh(outbox)
    assert (outbox.status, outbox.attempts, outbox.last_error) == ("queued", 1, "SMTPServerDisconnected: closed")
    assert session.scalars(select(EmailLog)).all() == []
    assert broken.calls == 1

    # And the next attempt sends it
    mailer = MemoryMailer()
    assert deliver_email(session, outbox.id, mailer, sender=SENDER, now=NOW).status == "sent"
    session.commit()
    assert len(mailer.sent) == 1
    # A late failure report for a row sent meanwhile changes nothing
    assert record_delivery_failure(session, outbox.id, "late") == 1
    session.commit()
    session.refresh(outbox)
    assert (outbox.status, outbox.last_error) == ("sent", "SMTPServerDisconnected: closed")


def test_giving_up_parks_the_email(session):
    outbox = invoice_email(session)
    assert record_delivery_failure(session, outbox.id, "x" * 5000, give_up=True) == 1
    session.commit()
    session.refresh(outbox)
    assert outbox.status == "failed" and len(outbox.last_error) == 2000
    assert pending_email_ids(session, created_before=datetime(2999, 1, 1, tzinfo=UTC)) == []
    assert record_delivery_failure(session, 424242, "gone") is None


def test_a_resend_after_a_crash_carries_the_same_message_id(session):
    # Given an email sent, but the worker died before its commit
    outbox = invoice_email(session)
    session.commit()
    mailer = MemoryMailer()
    deliver_email(session, outbox.id, mailer, sender=SENDER, now=NOW)
    session.rollback()

    # When it is delivered again
    assert deliver_email(session, outbox.id, mailer, sender=SENDER, now=NOW).status == "sent"
    session.commit()

    # Then the receiver sees the same Message-ID twice (and can drop one); we log it once
    assert [m["Message-ID"] for m in mailer.sent] == [message_id_for(outbox.id, SENDER)] * 2
    assert len(session.scalars(select(EmailLog)).all()) == 1


def test_a_render_error_sends_nothing(session):
    outbox = invoice_email(session, template="no_such_email")
    mailer = MemoryMailer()
    with pytest.raises(ValidationError):
        deliver_email(session, outbox.id, mailer, sender=SENDER, now=NOW)
    assert mailer.sent == []


def test_now_must_be_aware(session):
    outbox = invoice_email(session)
    with pytest.raises(ValidationError):
        deliver_email(session, outbox.id, MemoryMailer(), sender=SENDER, now=datetime(2024, 5, 1))


def test_message_id_is_stable_per_row():
    assert message_id_for(12, SENDER) == message_id_for(12, SENDER) == "<outbox-12.billingworker@acme.test>"
    assert message_id_for(13, SENDER) != message_id_for(12, SENDER)
    assert message_id_for(12, "no address") == "<outbox-12@billingworker>"


def test_pending_email_ids_oldest_queued_first(session):
    client = factories.client(session)
    t0 = datetime(2024, 5, 1, 8, 0, tzinfo=UTC)

    def row(minutes: int, status: str = "queued") -> int:
        outbox = OutboxEmail(template="invoice_created", client_id=client.id, context="{}", status=status,
                             created_at=t0 + timedelta(minutes=minutes))
        session.add(outbox)
        session.flush()
        return outbox.id

    late = row(30)
    early = row(10)
    row(5, status="sent")
    row(6, status="failed")
    too_new = row(60)
    session.commit()

    cutoff = t0 + timedelta(minutes=45)
    assert pending_email_ids(session, created_before=cutoff) == [early, late]
    assert pending_email_ids(session, created_before=cutoff, limit=1) == [early]
    assert too_new not in pending_email_ids(session, created_before=cutoff)
    # the same instant in another time zone is the same cutoff
    from zoneinfo import ZoneInfo

    assert pending_email_ids(session, created_before=cutoff.astimezone(ZoneInfo("Australia/Sydney"))) == [
        early, late]


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

    # Then exactly one sends it and the other finds it sent
    assert errors == []
    assert sorted(results) == ["already_sent", "sent"]
    assert len(mailer.sent) == 1
    with make_session() as s:
        assert len(s.scalars(select(EmailLog).where(EmailLog.outbox_id == email_id)).all()) == 1
