"""Delivering outbox emails in batches (the daily run's fast path), on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import smtplib
import threading
import time
from email.message import EmailMessage

from sqlalchemy import func, select

from billingworker.adapters.mailer import MemoryMailer, SmtpMailer
from billingworker.db import session_factory
from billingworker.domain.messaging.delivery import deliver_emails
from billingworker.domain.models import Client, EmailLog, Invoice, InvoiceStatus, OutboxEmail, OutboxStatus
from tests import factories
from tests.adapters.test_mailer import smtp_server  # noqa: F401 - the real SMTP server fixture
from tests.factories import DELIVERY_NOW as NOW
from tests.factories import SENDER, invoice_email


def queued_invoice_emails(session, n: int) -> list[int]:
    ids = []
    for i in range(n):
        client = factories.client(session, first_name=f"C{i}", email=f"c{i}@example.com")
        ids.append(invoice_email(session, client=client).id)
    session.commit()
    return ids


class RefusingMailer(MemoryMailer):
    """Refuses the messages addressed to ``refused`` (as an SMTP server refusing a recipient)."""

    def __init__(self, refused: str) -> None:
        super().__init__()
        self.refused = refused

    def send(self, message: EmailMessage) -> None:
        if self.refused in str(message["To"]):
            raise smtplib.SMTPRecipientsRefused({self.refused: (550, b"no such user")})
        super().send(message)


def test_a_batch_sends_each_email_once_and_logs_it(session):
    # Given five queued invoice emails
    ids = queued_invoice_emails(session, 5)
    mailer = MemoryMailer()

    # When they are delivered as one batch, and the batch is delivered again (a redelivery)
    first = deliver_emails(session, ids, mailer, sender=SENDER, now=NOW)
    session.commit()
    second = deliver_emails(session, ids, mailer, sender=SENDER, now=NOW)
    session.commit()

    # Then each went once, with its stable Message-ID, and is logged once
    assert [r.status for r in first.results] == ["sent"] * 5
    assert [r.status for r in second.results] == ["already_sent"] * 5
    assert sorted(m["To"] for m in mailer.sent) == [f"c{i}@example.com" for i in range(5)]
    assert {m["Message-ID"] for m in mailer.sent} == {f"<outbox-{i}.billingworker@acme.test>" for i in ids}
    assert session.scalar(select(func.count()).select_from(EmailLog)) == 5
    assert session.scalar(select(func.count()).where(OutboxEmail.status == OutboxStatus.SENT)) == 5
    # and the rendered invoice is the right one for each client
    for message in mailer.sent:
        client = session.scalar(select(Client).where(Client.email == message["To"]))
        assert f"Dear {client.first_name}" in message.get_body(("plain",)).get_content()


def test_a_refused_message_stays_queued_and_the_others_go(session):
    # Given three emails, one to an address the mail server refuses
    ids = queued_invoice_emails(session, 3)
    mailer = RefusingMailer("c1@example.com")

    # When the batch is delivered
    batch = deliver_emails(session, ids, mailer, sender=SENDER, now=NOW)
    session.commit()

    # Then two went, the refused one is queued again with one attempt and no log row
    assert [r.status for r in batch.results] == ["sent", "retry", "sent"]
    assert batch.retry_ids == (ids[1],)
    refused = session.get(OutboxEmail, ids[1])
    assert refused.status == OutboxStatus.QUEUED and refused.attempts == 1
    assert "no such user" in refused.last_error
    assert session.scalar(select(func.count()).where(EmailLog.outbox_id == ids[1])) == 0
    assert len(mailer.sent) == 2


def test_paid_reminders_are_skipped_and_unrenderable_rows_parked(session):
    # Given a reminder whose invoice was paid after it was queued, and an email whose invoice is gone
    reminder = invoice_email(session, template="first_invoice_overdue_notice")
    session.get(Invoice, json.loads(reminder.context)["invoice_id"]).status = InvoiceStatus.PAID
    orphan = OutboxEmail(template="payment_confirmation", client_id=reminder.client_id,
                         context=json.dumps({"invoice_id": 987654}), dedupe_key="payment_confirmation:987654")
    session.add(orphan)
    good = invoice_email(session, client=factories.client(session, email="good@example.com"))
    session.commit()
    mailer = MemoryMailer()

    # When the three are delivered as a batch
    batch = deliver_emails(session, [reminder.id, orphan.id, good.id], mailer, sender=SENDER, now=NOW)
    session.commit()

    # Then only the good one went; the reminder is skipped, the orphan parked as failed
    statuses = {r.email_id: r.status for r in batch.results}
    assert statuses == {reminder.id: "skipped", orphan.id: "failed", good.id: "sent"}
    assert [m["To"] for m in mailer.sent] == ["good@example.com"]
    assert session.get(OutboxEmail, reminder.id).status == OutboxStatus.SKIPPED
    assert session.get(OutboxEmail, orphan.id).status == OutboxStatus.FAILED
    assert "987654" in session.get(OutboxEmail, orphan.id).last_error


def test_unknown_ids_are_reported_missing(session):
    ids = queued_invoice_emails(session, 1)
    batch = deliver_emails(session, [ids[0], 424242], MemoryMailer(), sender=SENDER, now=NOW)
    assert {r.email_id: r.status for r in batch.results} == {ids[0]: "sent", 424242: "missing"}


class SlowMailer(MemoryMailer):
    def send(self, message: EmailMessage) -> None:
        time.sleep(0.05)
        super().send(message)


def test_two_workers_delivering_overlapping_batches_send_each_once(engine, session):
    # Given six committed emails, and two batches that share two of them
    ids = queued_invoice_emails(session, 6)
    session.close()  # on SQLite an open transaction would hold the writer lock
    mailer = SlowMailer()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []
    make_session = session_factory(engine)

    def worker(batch: list[int]) -> None:
        try:
            with make_session() as s:
                barrier.wait(timeout=10)
                deliver_emails(s, batch, mailer, sender=SENDER, now=NOW)
                s.commit()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)

    # When two workers deliver them at the same moment (in opposite orders)
    threads = [threading.Thread(target=worker, args=(ids[:4],)),
               threading.Thread(target=worker, args=(list(reversed(ids[2:])),))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)

    # Then every email went exactly once and is logged once
    assert errors == []
    assert sorted(str(m["Message-ID"]) for m in mailer.sent) == sorted(
        f"<outbox-{i}.billingworker@acme.test>" for i in ids)
    with make_session() as s:
        assert s.scalar(select(func.count()).select_from(EmailLog)) == 6


def test_smtp_batch_uses_one_connection_and_survives_a_refused_recipient(session, smtp_server):  # noqa: F811
    # Given a real SMTP server that refuses one recipient
    handler, port = smtp_server
    connections = []

    async def handle_RCPT(server, session_, envelope, address, options):  # noqa: N802 - aiosmtpd's hook name
        if address == "c1@example.com":
            return "550 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_EHLO(server, session_, envelope, hostname, responses):  # noqa: N802
        connections.append(hostname)
        session_.host_name = hostname
        return responses

    handler.handle_RCPT = handle_RCPT
    handler.handle_EHLO = handle_EHLO
    ids = queued_invoice_emails(session, 3)

    # When the batch goes through it
    batch = deliver_emails(session, ids, SmtpMailer("127.0.0.1", port, timeout=10), sender=SENDER, now=NOW)
    session.commit()

    # Then one connection carried the two accepted messages; the refused one waits for a retry
    assert [r.status for r in batch.results] == ["sent", "retry", "sent"]
    assert sorted(e.rcpt_tos[0] for e in handler.envelopes) == ["c0@example.com", "c2@example.com"]
    assert len(connections) == 1


def test_the_notice_of_an_invoice_cancelled_meanwhile_is_not_sent(session):
    # Given an "invoice created" email queued, then its invoice cancelled (e.g. the client was closed)
    cancelled = invoice_email(session)
    session.get(Invoice, json.loads(cancelled.context)["invoice_id"]).status = InvoiceStatus.CANCELLED
    kept = invoice_email(session, client=factories.client(session, email="kept@example.com"))
    session.commit()
    mailer = MemoryMailer()

    # When both are delivered, in a batch and one by one
    batch = deliver_emails(session, [cancelled.id, kept.id], mailer, sender=SENDER, now=NOW)
    session.commit()

    # Then only the live invoice's notice went
    assert {r.email_id: r.status for r in batch.results} == {cancelled.id: "skipped", kept.id: "sent"}
    assert [m["To"] for m in mailer.sent] == ["kept@example.com"]


def test_one_by_one_delivery_skips_the_notice_of_a_cancelled_invoice_too(session):
    from billingworker.domain.messaging.delivery import deliver_email

    cancelled = invoice_email(session)
    session.get(Invoice, json.loads(cancelled.context)["invoice_id"]).status = InvoiceStatus.CANCELLED
    session.commit()
    mailer = MemoryMailer()
    assert deliver_email(session, cancelled.id, mailer, sender=SENDER, now=NOW).status == "skipped"
    assert mailer.sent == []


def test_a_client_address_with_a_line_break_parks_that_email_only(session):
    # Given an email to a client whose address carries a header injection, and a good one
    bad = invoice_email(session, client=factories.client(session, email="ada@example.com\r\nBcc: x@example.com"))
    good = invoice_email(session, client=factories.client(session, email="good@example.com"))
    session.commit()
    mailer = MemoryMailer()

    # When both are delivered as a batch
    batch = deliver_emails(session, [bad.id, good.id], mailer, sender=SENDER, now=NOW)
    session.commit()

    # Then the bad one is parked as failed, naming the reason, and the good one went
    assert {r.email_id: r.status for r in batch.results} == {bad.id: "failed", good.id: "sent"}
    assert "control character U+000D" in session.get(OutboxEmail, bad.id).last_error
    assert [m["To"] for m in mailer.sent] == ["good@example.com"]
