"""send_password_reset_email and send_client_email through a real worker: one email per request,
however often or however concurrently the message is delivered; bad input dead-lettered."""

from __future__ import annotations

import re
import sqlite3
import threading
from datetime import timedelta

import pytest
from dramatiq import Message
from sqlalchemy import func, select, text, update

from billingworker.actors import broker
from billingworker.actors.accounts import send_password_reset_email
from billingworker.actors.messages import send_client_email
from billingworker.domain.accounts.password_reset import complete_password_reset, verify_reset_token
from billingworker.domain.accounts.passwords import verify_password
from billingworker.domain.messaging import client_email
from billingworker.domain.messaging.message_sandbox import RenderBudget
from billingworker.domain.models import (
    Client,
    ClientUser,
    Contact,
    EmailLog,
    EmailTemplate,
    JobFailure,
    OutboxEmail,
    PasswordResetToken,
    User,
)
from tests import factories as f
from tests.factories import ATTACK_IDS, ATTACKS

from .conftest import NOW, dead_letters, drain

TOKEN = re.compile(r"password-reset\?token=([A-Za-z0-9_-]+)")


@pytest.fixture(autouse=True)
def _secret_key(monkeypatch):
    monkeypatch.setenv("SECRET_KEY", "actor-tests-secret-key-0123456789")


def count(session, model, *where):
    session.rollback()
    return session.scalar(select(func.count()).select_from(model).where(*where))


def redeliver(message: Message) -> None:
    broker.enqueue(message)


def make_user(session, email="ada@example.com", **kw) -> User:
    user = User(email=email, first_name="Ada", **kw)
    session.add(user)
    session.flush()
    return user


def text_of(message) -> str:
    return message.get_body(preferencelist=("plain",)).get_content()


def enqueue_at_once(n: int, send) -> None:
    barrier = threading.Barrier(n)

    def run():
        barrier.wait()
        send()

    threads = [threading.Thread(target=run) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


# -- send_password_reset_email ----------------------------------------------------------------

def test_a_reset_delivered_twice_sends_one_link_that_works_once(session, worker, mailer):
    user = make_user(session)
    client = f.client(session)
    session.add(ClientUser(client_id=client.id, user_id=user.id, is_owner=True))
    session.commit()

    message = send_password_reset_email.send(email="ada@example.com")
    drain()
    redeliver(message)
    drain()

    assert len(mailer.sent) == 1 and mailer.sent[0]["To"] == "ada@example.com"
    assert count(session, PasswordResetToken) == 1 and not dead_letters()
    token = TOKEN.search(text_of(mailer.sent[0])).group(1)
    log = session.scalars(select(EmailLog)).one()
    assert token not in log.body_text + log.body_html and "[redacted]" in log.body_text
    assert log.client_id == client.id
    assert verify_reset_token(session, token, now=NOW) == user.id
    complete_password_reset(session, token, "brand new password", now=NOW + timedelta(minutes=1))
    session.commit()
    assert verify_password(session.get(User, user.id).password_hash, "brand new password")


def test_a_reset_delivered_concurrently_sends_one_email(session, worker, mailer):
    make_user(session)
    session.commit()
    message = send_password_reset_email.message(email="ada@example.com")
    enqueue_at_once(4, lambda: broker.enqueue(message))
    drain()
    assert len(mailer.sent) == 1
    assert count(session, PasswordResetToken) == 1 and count(session, OutboxEmail) == 1


def test_the_same_request_id_in_two_messages_sends_one_email(session, worker, mailer):
    user = make_user(session)
    session.commit()
    enqueue_at_once(3, lambda: send_password_reset_email.send(user_id=user.id, requested_by="admin",
                                                              request_id="panel-click-42"))
    drain()
    assert len(mailer.sent) == 1 and "Our staff" in text_of(mailer.sent[0])
    assert count(session, PasswordResetToken) == 1


def test_two_different_requests_leave_one_working_link(session, worker, mailer):
    user = make_user(session)
    session.commit()
    send_password_reset_email.send(email="ada@example.com")
    send_password_reset_email.send(email="ada@example.com")
    drain()
    # one or two emails, as the deliveries and the second request interleave: a link replaced
    # before its email's turn is not sent at all (still_wanted.py)
    assert 1 <= len(mailer.sent) <= 2 and count(session, PasswordResetToken) == 2
    tokens = [TOKEN.search(text_of(m)).group(1) for m in mailer.sent]
    valid = []
    for token in tokens:
        try:
            valid.append(verify_reset_token(session, token, now=NOW))
        except Exception:  # noqa: BLE001 - the superseded one
            pass
    assert valid == [user.id]


def test_an_unknown_email_completes_silently(session, worker, mailer):
    make_user(session)
    session.commit()
    send_password_reset_email.send(email="stranger@example.com")
    drain()
    assert mailer.sent == [] and not dead_letters()
    assert count(session, JobFailure) == 0 and count(session, PasswordResetToken) == 0


def test_an_unchecked_security_question_is_refused(session, worker, mailer):
    make_user(session, security_question="First pet?")
    session.commit()
    send_password_reset_email.send(email="ada@example.com")
    drain()
    assert mailer.sent == [] and len(dead_letters()) == 1
    failure = session.scalars(select(JobFailure)).one()
    assert failure.field == "security_checked"
    send_password_reset_email.send(email="ada@example.com", security_checked=True)
    drain()
    assert len(mailer.sent) == 1


def test_the_rate_limit_stops_the_emails(session, worker, mailer):
    make_user(session)
    session.commit()
    for _ in range(7):
        send_password_reset_email.send(email="ada@example.com")
    drain()
    # five tokens an hour; of their emails, those whose link was replaced before delivery are skipped
    assert count(session, PasswordResetToken) == 5 and not dead_letters()
    assert 1 <= len(mailer.sent) <= 5


@pytest.mark.parametrize("kwargs, field", [
    ({"email": "ada@example.com", "requested_by": "robot"}, "requested_by"),
    ({"user_id": "abc"}, "user_id"),
    ({"email": 12}, "email"),
    ({"email": "ada@example.com", "security_checked": "yes"}, "security_checked"),
    ({"email": "ada@example.com", "request_id": ""}, "request_id"),
    ({}, "user_id"),
    ({"email": "ada@example.com", "password": "x"}, "arguments"),
])
def test_bad_reset_input_is_dead_lettered(session, worker, mailer, kwargs, field):
    make_user(session)
    session.commit()
    send_password_reset_email.send(**kwargs)
    drain()
    assert mailer.sent == [] and len(dead_letters()) == 1
    assert session.scalars(select(JobFailure.field)).one() == field


# -- send_client_email ------------------------------------------------------------------------

def test_a_written_message_delivered_twice_is_sent_once(session, worker, mailer):
    c = f.client(session, first_name="Ada", email="ada@example.com")
    session.add(Contact(client_id=c.id, email="team@example.com", general_emails=True))
    session.commit()
    message = send_client_email.send(client_id=c.id, subject="Hello {{ first_name }}",
                                     body="Dear {{ first_name }},\n\nWe moved.", save_message=True,
                                     save_as="Moved")
    drain()
    redeliver(message)
    drain()
    assert len(mailer.sent) == 1 and not dead_letters()
    sent = mailer.sent[0]
    assert sent["Subject"] == "Hello Ada" and sent["To"] == "ada@example.com" and sent["Cc"] == "team@example.com"
    assert "Dear Ada," in text_of(sent)
    assert count(session, EmailLog) == 1 and count(session, EmailTemplate) == 1


@pytest.mark.parametrize("character", ["\N{GRINNING FACE}", "\N{LATIN SMALL LETTER E WITH ACUTE}", "<"])
def test_the_longest_body_in_wide_characters_is_sent_once_and_logged(session, worker, mailer, character):
    # MySQL's TEXT holds 65,535 bytes: this body, stored as escaped JSON (12 bytes an emoji) and
    # rendered to HTML ("<" becomes "&lt;"), did not fit there and was retried, or sent again at
    # each retry once the mail server had it (migration 0012: LONGTEXT)
    c = f.client(session)
    session.commit()
    body = character * client_email.MAX_BODY_LENGTH
    send_client_email.send(client_id=c.id, subject="Long", body=body, save_message=True, save_as="Long")
    drain()
    assert not dead_letters() and len(mailer.sent) == 1
    logged = session.execute(select(EmailLog.body_text, EmailLog.body_html)).one()
    assert logged.body_text.count(character) == client_email.MAX_BODY_LENGTH
    assert session.scalar(select(EmailTemplate.body).where(EmailTemplate.name == "Long")) == body


def test_a_client_email_delivered_concurrently_is_sent_once(session, worker, mailer):
    c = f.client(session)
    session.commit()
    message = send_client_email.message(client_id=c.id, template="client_signup")
    enqueue_at_once(4, lambda: broker.enqueue(message))
    drain()
    assert len(mailer.sent) == 1 and mailer.sent[0]["Subject"] == "Welcome to Example Hosting"
    assert count(session, OutboxEmail) == 1


def test_the_same_request_id_sends_one_client_email(session, worker, mailer):
    c = f.client(session)
    session.commit()
    for _ in range(2):
        send_client_email.send(client_id=c.id, subject="Hi", body="Hello", request_id="compose-7")
    drain()
    assert len(mailer.sent) == 1


def test_template_injection_is_dead_lettered_and_sends_nothing(session, worker, mailer):
    c = f.client(session)
    session.commit()
    send_client_email.send(client_id=c.id, subject="Hi", body="{{ ''.__class__.__mro__ }}", save_message=True)
    drain()
    assert mailer.sent == [] and len(dead_letters()) == 1
    failure = session.scalars(select(JobFailure)).one()
    assert failure.field == "body" and failure.client_id == c.id
    assert count(session, OutboxEmail) == 0 and count(session, EmailTemplate) == 0


@pytest.mark.parametrize("kwargs, field", [
    ({"client_id": "x", "subject": "a", "body": "b"}, "client_id"),
    ({"client_id": 999, "subject": "a", "body": "b"}, "client_id"),
    ({"subject": "a", "body": "b", "save_message": "yes"}, "save_message"),
    ({"template": "invoice_created"}, "template"),
    ({"subject": "a"}, "body"),
])
def test_bad_client_email_input_is_dead_lettered(session, worker, mailer, kwargs, field):
    c = f.client(session)
    session.commit()
    send_client_email.send(**({"client_id": c.id} | kwargs))
    drain()
    assert mailer.sent == [] and len(dead_letters()) == 1
    assert session.scalars(select(JobFailure.field)).one() == field


# -- send_client_email: the rendering budget (issue 9) ---------------------------------------

@pytest.mark.parametrize("name, field, source, refusal", ATTACKS, ids=ATTACK_IDS)
def test_a_message_over_the_rendering_budget_is_dead_lettered_after_one_attempt(session, worker, mailer, name,
                                                                                field, source, refusal):
    c = f.client(session)
    session.commit()
    message = {"subject": "Hello", "body": "Hello"} | {field: source}
    send_client_email.send(client_id=c.id, save_message=True, **message)
    drain()
    letters = dead_letters()
    assert mailer.sent == [] and len(letters) == 1
    assert letters[0].options.get("retries", 0) == 0, "refused at its first attempt, never retried"
    failure = session.scalars(select(JobFailure)).one()
    assert (failure.field, failure.client_id, failure.error) == (field, c.id, "ValidationError")
    assert refusal in failure.reason, failure.reason
    assert count(session, OutboxEmail) == 0 and count(session, EmailTemplate) == 0


def test_running_out_of_memory_while_rendering_is_a_refusal_not_a_retry(session, worker, mailer, monkeypatch):
    c = f.client(session)
    session.commit()

    def out_of_memory(self):
        raise MemoryError()

    monkeypatch.setattr(RenderBudget, "step", out_of_memory)
    send_client_email.send(client_id=c.id, subject="Hi", body="Hello {{ first_name }}")
    drain()
    assert mailer.sent == [] and len(dead_letters()) == 1
    assert dead_letters()[0].options.get("retries", 0) == 0
    failure = session.scalars(select(JobFailure)).one()
    assert failure.field == "body" and "exceeds the rendering budget (memory)" in failure.reason


def test_no_transaction_is_held_while_a_message_renders(engine, session, worker, mailer, monkeypatch):
    """The render is paused, as a slow one within its budget would be: meanwhile another writer
    gets SQLite's lock at once (a 1 s busy timeout, else "database is locked"), and on
    PostgreSQL and MariaDB no connection is left idle in a transaction."""
    c = f.client(session, company_name="Engines")
    session.commit()
    rendering, written = threading.Event(), threading.Event()
    real_render = client_email.render_written

    def paused_render(field, source, context, budget=None):
        if field == "body" and not rendering.is_set():
            rendering.set()
            written.wait(timeout=30)
        return real_render(field, source, context, budget)

    monkeypatch.setattr(client_email, "render_written", paused_render)
    send_client_email.send(client_id=c.id, subject="Hi", body="Hello {{ company_name }}")
    assert rendering.wait(timeout=30), "the job never rendered the message"
    try:
        if engine.dialect.name == "sqlite":
            other = sqlite3.connect(engine.url.database, timeout=1, isolation_level=None)
            try:
                other.execute("BEGIN IMMEDIATE")
                other.execute("UPDATE clients SET company_name = 'Written meanwhile' WHERE id = ?", (c.id,))
                other.execute("COMMIT")
            finally:
                other.close()
        elif engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                conn.execute(text("SET lock_timeout = '1s'"))
                conn.execute(update(Client).where(Client.id == c.id).values(company_name="Written meanwhile"))
                idle_in_transaction = conn.scalar(text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"))
                conn.commit()
            assert idle_in_transaction == 0
        else:  # MySQL/MariaDB: an open transaction on a connection that is doing nothing
            with engine.connect() as conn:
                conn.execute(text("SET SESSION innodb_lock_wait_timeout = 1"))
                conn.execute(update(Client).where(Client.id == c.id).values(company_name="Written meanwhile"))
                idle_in_transaction = conn.scalar(text(
                    "SELECT count(*) FROM information_schema.innodb_trx t JOIN information_schema.processlist p"
                    " ON p.id = t.trx_mysql_thread_id WHERE p.db = DATABASE() AND p.id <> CONNECTION_ID()"
                    " AND p.command = 'Sleep'"))
                conn.commit()
            assert idle_in_transaction == 0
    finally:
        written.set()
    drain()
    assert not dead_letters() and len(mailer.sent) == 1
    assert "Hello Written meanwhile" in text_of(mailer.sent[0]), "delivery renders the client as it is then"
