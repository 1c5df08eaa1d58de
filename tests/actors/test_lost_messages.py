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
from billingworker.actors.emails import EmailNotAccepted, give_up_email_delivery
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import DailyRun, DailyRunTask, EmailLog, OutboxEmail
from tests import factories as f
from tests.factories import RUN_DAY as DAY
from tests.factories import seed_day

from .conftest import NOW, drain, hold_messages


def test_a_batch_delivered_again_after_its_work_resends_its_lost_follow_ups(session, worker, mailer, monkeypatch):
    # Given a daily run whose first batch's emails and advance were lost with the broker
    seed_day(session)
    rt.configure(batch_size=10)
    broker = daily_actors.advance_daily_run.broker
    real_enqueue, advances = broker.enqueue, []

    def lose_the_follow_ups_of_the_batch(message, *, delay=None):
        if message.actor_name in ("deliver_email", "deliver_emails"):
            return message  # the batch's emails: lost
        if message.actor_name == "advance_daily_run":
            advances.append(message)
            if len(advances) > 1:
                return message  # the run's start goes, the advance after the batch is lost
        return real_enqueue(message, delay=delay)

    monkeypatch.setattr(broker, "enqueue", lose_the_follow_ups_of_the_batch)
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
    monkeypatch.setattr("billingworker.actors.emails.delivery_messages", lambda ids: offered.extend(ids) or [])

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


def test_a_refused_email_is_retried_then_parked(session, engine, clock, monkeypatch):
    from dramatiq import Message

    from tests.factories import invoice_email

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

        # And when Dramatiq gives up after the last try (as Retries does: the message and its
        # counts), the row is marked failed (the relay stops offering it)
        with pytest.raises(EmailNotAccepted):
            deliver_email.fn(email_id)
        spent = Message(queue_name="emails", actor_name="deliver_email", args=(), kwargs={"email_id": email_id},
                        options={"retries": 1}).asdict()
        monkeypatch.setitem(deliver_email.options, "max_retries", 1)
        give_up_email_delivery.fn(spent, {"retries": 1, "max_retries": 1})
        session.refresh(row)
        assert (row.status, row.attempts, mailer.calls) == ("failed", 2, 2)
    finally:
        rt.reset()


def test_a_give_up_before_the_tries_are_spent_changes_nothing(session, engine, monkeypatch):
    from dramatiq import Message

    from tests.factories import invoice_email

    # Given a queued email that failed once, with tries left
    email_id = invoice_email(session).id
    session.get(OutboxEmail, email_id).attempts = 1
    session.commit()
    rt.configure(engine=engine)
    try:
        # When a give-up arrives anyway (a forged message, or one naming the wrong email)
        forged = Message(queue_name="emails", actor_name="deliver_email", args=(email_id,), kwargs={},
                         options={}).asdict()
        give_up_email_delivery.fn(forged, {"retries": 10, "max_retries": 10})
        # Then the email still waits for its next try
        session.expire_all()
        assert session.get(OutboxEmail, email_id).status == "queued"
        # And a message that is not a spent delivery is refused, naming the field
        with pytest.raises(ValidationError, match="message_data"):
            give_up_email_delivery.fn({"actor_name": "apply_payment", "args": [], "kwargs": {}}, {})
    finally:
        rt.reset()


def test_a_give_up_never_fails_an_email_another_worker_is_sending(session, engine, clock, monkeypatch):
    from dramatiq import Message

    from tests.factories import invoice_email

    # Given an email whose tries are spent, but which the relay offered again and a worker has
    # claimed a moment ago (it is being sent now)
    email_id = invoice_email(session).id
    row = session.get(OutboxEmail, email_id)
    row.attempts, row.status, row.claimed_at = 11, "sending", NOW - timedelta(seconds=5)
    session.commit()
    rt.configure(engine=engine, clock=clock)
    spent = Message(queue_name="emails", actor_name="deliver_email", args=(email_id,), kwargs={},
                    options={}).asdict()
    try:
        # When the give-up of the first delivery arrives
        give_up_email_delivery.fn(spent, {"retries": 10, "max_retries": 10})
        # Then the live claim is left alone: that delivery can still mark it sent
        session.expire_all()
        assert session.get(OutboxEmail, email_id).status == "sending"
        session.rollback()  # SQLite: a reader holds the writer lock (BEGIN IMMEDIATE)
        # But a claim left by a dead worker (older than the claim timeout) is given up on
        clock.set(NOW + timedelta(seconds=130))
        give_up_email_delivery.fn(spent, {"retries": 10, "max_retries": 10})
        session.expire_all()
        assert session.get(OutboxEmail, email_id).status == "failed"
    finally:
        rt.reset()


def test_deliver_email_hands_its_spent_message_to_the_give_up(session, engine, worker, monkeypatch):
    from tests.factories import invoice_email

    # Given a mail server that refuses everything, and a delivery with one retry, fast
    email_id = invoice_email(session).id
    session.commit()
    mailer = RefusingMailer()
    rt.configure(engine=engine, mailer=mailer)
    monkeypatch.setitem(deliver_email.options, "max_retries", 1)
    monkeypatch.setitem(deliver_email.options, "min_backoff", 10)
    monkeypatch.setitem(deliver_email.options, "max_backoff", 20)
    # When the delivery runs through the worker until Dramatiq gives up
    deliver_email.send(email_id)
    drain()
    # Then both tries were made and the give-up marked the row failed
    session.expire_all()
    row = session.get(OutboxEmail, email_id)
    assert (row.status, row.attempts, mailer.calls) == ("failed", 2, 2)


def test_the_same_email_sent_ten_times_goes_once(session, worker, mailer):
    from tests.factories import invoice_email

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
    held = hold_messages(monkeypatch, "run_daily_batch")
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
