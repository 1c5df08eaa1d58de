"""What is no longer sent when its turn comes: a replaced or expired reset link (SPEC §10); the
invoice rules are tested with the reminders and the batch delivery."""

from __future__ import annotations

from datetime import timedelta

from billingworker.adapters.mailer import MemoryMailer
from billingworker.domain.accounts.password_reset import validity
from billingworker.domain.messaging.delivery import deliver_email, deliver_emails
from billingworker.domain.models import OutboxEmail
from billingworker.domain.settings import BillingSettings
from tests.domain.accounts.test_password_reset import _secret_key  # noqa: F401 - fixture
from tests.factories import RESET_NOW as NOW
from tests.factories import make_user
from tests.factories import request_reset as reset

SENDER = "Billing <billing@example.com>"


def test_a_replaced_reset_link_is_not_sent_and_the_newer_one_is(session):
    # Given two reset requests, the second replacing the first, before any email went
    make_user(session)
    first = reset(session, "req:1")
    second = reset(session, "req:2", now=NOW + timedelta(minutes=1))
    session.commit()
    mailer = MemoryMailer()

    # When both emails are delivered (as a batch)
    batch = deliver_emails(session, [*first.email_ids, *second.email_ids], mailer, sender=SENDER,
                           now=NOW + timedelta(minutes=2))
    session.commit()

    # Then only the working link went; the replaced one is skipped
    assert [r.status for r in batch.results] == ["skipped", "sent"]
    assert len(mailer.sent) == 1
    assert session.get(OutboxEmail, first.email_ids[0]).status == "skipped"


def test_a_reset_link_that_expired_before_delivery_is_not_sent(session):
    # Given a reset email still queued when its link expires (the mail server was down)
    make_user(session)
    request = reset(session, "req:1")
    session.commit()
    late = NOW + validity(BillingSettings())
    mailer = MemoryMailer()

    # When it is delivered at the end of the window, one by one
    result = deliver_email(session, request.email_ids[0], mailer, sender=SENDER, now=late)
    session.commit()

    # Then nothing went: the link would only fail
    assert result.status == "skipped" and mailer.sent == []


def test_a_reset_link_still_open_is_sent(session):
    make_user(session)
    request = reset(session, "req:1")
    session.commit()
    mailer = MemoryMailer()
    result = deliver_email(session, request.email_ids[0], mailer, sender=SENDER,
                           now=NOW + timedelta(minutes=119))
    assert result.status == "sent" and len(mailer.sent) == 1
