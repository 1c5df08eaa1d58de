"""What a lost message costs: a redelivered batch re-sends its follow-ups, the relay drains the
whole outbox, a refused email is retried and then parked. Through a real worker (stub broker)."""

from __future__ import annotations

import json
import smtplib
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select

from billingworker import runtime as rt
from billingworker.actors import daily as daily_actors
from billingworker.actors import deliver_email, relay_outbox, run_daily_automation, run_daily_batch
from billingworker.actors.emails import EmailNotAccepted
from billingworker.domain.models import DailyRun, DailyRunTask, EmailLog, OutboxEmail
from tests import factories as f

from .conftest import NOW, drain
from .test_daily_run import DAY, seed_day


def test_a_batch_delivered_again_after_its_work_resends_its_lost_follow_ups(session, worker, mailer, monkeypatch):
    # Given a daily run whose first batch's emails and advance were lost with the broker
    seed_day(session)
    rt.configure(batch_size=10)
    monkeypatch.setattr(daily_actors, "send_emails", lambda ids: None)
    real_send, advances = daily_actors.advance_daily_run.send, []

    def lose_the_advance_of_the_batch(**kwargs):
        advances.append(kwargs)
        return real_send(**kwargs) if len(advances) == 1 else None  # the run's start goes, the next is lost

    monkeypatch.setattr(daily_actors.advance_daily_run, "send", lose_the_advance_of_the_batch)
    run_daily_automation.send(as_of=DAY.isoformat())
    drain()
    session.rollback()
    run_id = session.scalar(select(DailyRun.id))
    generate = session.get(DailyRunTask, (run_id, "generate_due_invoices"))
    assert session.scalar(select(DailyRun.status)) == "running"
    assert generate.batches_done == generate.batches_total == 1
    [(first, last)] = json.loads(generate.batches)
    queued = session.scalar(select(func.count()).where(OutboxEmail.status == "queued"))
    assert queued >= 2 and mailer.sent == []
    session.rollback()

    # When the batch message is delivered again (as after a broker restart)
    monkeypatch.undo()
    rt.configure(batch_size=10)
    run_daily_batch.send(run_id=run_id, task="generate_due_invoices", batch_no=0, first_client_id=first,
                         last_client_id=last)
    drain()

    # Then its emails went, and the run moved on to its end
    session.rollback()
    assert session.scalar(select(DailyRun.status)) == "succeeded"
    assert session.scalar(select(func.count()).where(OutboxEmail.status == "queued")) == 0
    assert len(mailer.sent) == session.scalar(select(func.count()).select_from(EmailLog)) >= queued


def test_the_relay_drains_the_whole_outbox_and_offers_a_row_once_per_age(session, worker, clock, monkeypatch):
    # Given 2,500 emails whose delivery messages were lost two minutes ago
    client = f.client(session)
    written = NOW - timedelta(minutes=2)
    session.execute(insert(OutboxEmail), [{"template": "invoice_created", "client_id": client.id, "context": "{}",
                                           "created_at": written} for _ in range(2500)])
    session.commit()
    offered: list = []
    monkeypatch.setattr("billingworker.actors.emails.send_in_batches", offered.extend)

    # When the relay runs, then runs again at once
    relay_outbox.fn()
    first_pass = list(offered)
    relay_outbox.fn()

    # Then every row was offered once, in pages, and none twice within the relay age
    assert sorted(first_pass) == sorted(session.scalars(select(OutboxEmail.id))) and len(first_pass) == 2500
    assert offered == first_pass
    session.rollback()  # SQLite: a reader holds the writer lock (BEGIN IMMEDIATE)
    clock.set(NOW + timedelta(seconds=61))  # a minute on, still undelivered: offered again
    relay_outbox.fn(limit=10)
    assert len(offered) == 2510


class RefusingMailer:
    def __init__(self) -> None:
        self.calls = 0

    def send(self, message) -> None:
        self.calls += 1
        raise smtplib.SMTPDataError(451, b"try again later")


def test_a_refused_email_is_retried_then_parked(session, engine, clock):
    from dramatiq import Message
    from dramatiq.middleware import CurrentMessage

    from tests.domain.messaging.test_delivery import invoice_email

    # Given a queued email and a mail server that refuses it
    email_id = invoice_email(session).id
    session.commit()
    mailer = RefusingMailer()
    rt.configure(engine=engine, clock=clock, mailer=mailer)
    try:
        # When delivery is attempted: a transient error, retried by Dramatiq, the row queued again
        with pytest.raises(EmailNotAccepted, match="try again later"):
            deliver_email.fn(email_id)
        row = session.get(OutboxEmail, email_id)
        session.refresh(row)
        assert (row.status, row.attempts) == ("queued", 1)
        session.rollback()  # SQLite: a reader holds the writer lock (BEGIN IMMEDIATE)

        # And on the last retry the row is parked as failed (the relay stops offering it)
        last = Message(queue_name="emails", actor_name="deliver_email", args=(), kwargs={"email_id": email_id},
                       options={"retries": 10})
        CurrentMessage._MESSAGE.set(last)
        try:
            with pytest.raises(EmailNotAccepted):
                deliver_email.fn(email_id)
        finally:
            CurrentMessage._MESSAGE.set(None)
        session.refresh(row)
        assert (row.status, row.attempts, mailer.calls) == ("failed", 2, 2)
    finally:
        rt.reset()


def test_the_same_email_sent_ten_times_goes_once(session, worker, mailer):
    from tests.domain.messaging.test_delivery import invoice_email

    email_id = invoice_email(session).id
    session.commit()
    for _ in range(10):
        deliver_email.send(email_id)
    drain()
    assert len(mailer.sent) == 1
    assert session.scalar(select(func.count()).select_from(EmailLog)) == 1



def test_an_advance_resends_missing_batches_only_once_the_task_stopped_moving(session, worker, clock, monkeypatch):
    # Given a run whose first task started with three batches, their messages held back
    seed_day(session)
    rt.configure(batch_size=1)
    held: list[dict] = []
    monkeypatch.setattr(daily_actors.run_daily_batch, "send", lambda **kwargs: held.append(kwargs))
    run_daily_automation.send(as_of=DAY.isoformat())
    drain()
    assert len(held) == 3
    session.rollback()
    run_id = session.scalar(select(DailyRun.id))
    session.rollback()

    # When advances arrive while the task is young (duplicates, a batch's own advance)
    for _ in range(5):
        daily_actors.advance_daily_run.send(run_id=run_id)
    drain()

    # Then nothing is re-sent: duplicates never multiply
    assert len(held) == 3

    # And once the task has not moved for RESEND_IDLE_SECONDS, one advance re-sends the missing batches
    clock.set(NOW + timedelta(seconds=daily_actors.RESEND_IDLE_SECONDS))
    daily_actors.advance_daily_run.send(run_id=run_id)
    drain()
    assert len(held) == 6 and held[3:] == held[:3]
