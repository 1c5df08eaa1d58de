"""Batched email delivery through a real worker: what a billing job queues goes out in batches."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from billingworker.actors import broker, deliver_emails
from billingworker.actors.emails import enqueue_delivery
from billingworker.domain.models import EmailLog, OutboxEmail, OutboxStatus
from tests import factories
from tests.actors.conftest import dead_letters, drain
from tests.factories import invoice_email


def test_many_emails_go_as_batches_and_each_once(session, worker, mailer, monkeypatch):
    # Given five queued emails and batches of two
    monkeypatch.setattr("billingworker.actors.emails.EMAIL_BATCH_SIZE", 2)
    ids = [invoice_email(session, client=factories.client(session, email=f"c{i}@example.com")).id for i in range(5)]
    session.commit()
    sent_messages = []
    monkeypatch.setattr(broker, "enqueue", _spy(broker.enqueue, sent_messages))

    # When a job hands them over (twice, as a redelivered job would)
    enqueue_delivery(ids)
    enqueue_delivery(ids)
    drain()

    # Then they travelled in batches of at most two, and each email went once
    batches = [m for m in sent_messages if m.actor_name == "deliver_emails"]
    assert sorted(len(m.args[0]) for m in batches) == [1, 1, 2, 2, 2, 2]
    assert sorted(m["To"] for m in mailer.sent) == [f"c{i}@example.com" for i in range(5)]
    assert session.scalar(select(func.count()).select_from(EmailLog)) == 5
    assert session.scalar(select(func.count()).where(OutboxEmail.status == OutboxStatus.QUEUED)) == 0


def _spy(enqueue, seen):
    def spy(message, *, delay=None):
        seen.append(message)
        return enqueue(message, delay=delay)
    return spy


@pytest.mark.parametrize("email_ids", [[], "1,2", [0], list(range(1, 102))])
def test_bad_batches_are_dead_lettered_at_once(session, worker, email_ids):
    message = deliver_emails.send(email_ids)
    drain()
    [dead] = dead_letters()
    assert dead.message_id == message.message_id
    assert dead.options.get("retries", 0) == 0
