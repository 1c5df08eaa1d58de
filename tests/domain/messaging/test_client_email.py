"""Emails an admin sends from the client profile (SPEC §14): templates, sandboxed written messages."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from functools import partial

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billingworker.adapters.mailer import MemoryMailer
from billingworker.domain.errors import NotFound, ValidationError
from billingworker.domain.messaging.client_email import send_client_email
from billingworker.domain.messaging.delivery import deliver_email, deliver_emails
from billingworker.domain.messaging.message_sandbox import render_written
from billingworker.domain.messaging.rendering import render_outbox_email
from billingworker.domain.models import Client, Contact, EmailLog, EmailTemplate, OutboxEmail
from tests import factories as f
from tests.factories import race

NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
SENDER = "Billing <billing@example.com>"


def count(session: Session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def send(session: Session, client_id: int, key: str = "send_client_email:request:1", **kw):
    return send_client_email(session, client_id, dedupe_key=key, now=NOW, **kw)


def rendered(session: Session, email_id: int):
    return render_outbox_email(session, session.get(OutboxEmail, email_id))


def contact(session: Session, client: Client, email: str, **kw) -> Contact:
    row = Contact(client_id=client.id, email=email, **kw)
    session.add(row)
    session.flush()
    return row


def test_a_written_message_is_rendered_with_the_clients_fields(session):
    c = f.client(session, first_name="Ada", company_name="Analytical Engines", email="ada@example.com",
                 credit_balance=Decimal("12.50"))
    contact(session, c, "accounts@example.com", general_emails=True)
    contact(session, c, "invoices-only@example.com", invoice_emails=True)
    contact(session, c, "ADA@example.com", general_emails=True)  # the client's own address, once
    done = send(session, c.id, subject="Hello {{ first_name }}",
                body="Dear {{ first_name }} of {{ company_name }},\n\nYour credit: {{ credit_balance }}.\n"
                     "{{ settings.company_name }}")
    session.commit()
    assert done.outcome == "queued" and done.template == "client_message"
    mail = rendered(session, done.email_ids[0])
    assert mail.subject == "Hello Ada"
    assert "Dear Ada of Analytical Engines," in mail.text and "Your credit: $12.50 USD." in mail.text
    assert "Example Hosting" in mail.text
    assert "<p>Dear Ada of Analytical Engines,</p>" in mail.html
    assert mail.to == ["ada@example.com"] and mail.cc == ["accounts@example.com"]
    assert mail.client_id == c.id


def test_the_html_part_is_autoescaped(session):
    c = f.client(session, first_name="<script>alert(1)</script>")
    done = send(session, c.id, subject="Hi {{ first_name }}", body="Hi {{ first_name }} & <b>friends</b>")
    mail = rendered(session, done.email_ids[0])
    assert "<script>" not in mail.html and "&lt;script&gt;alert(1)&lt;/script&gt;" in mail.html
    assert "&lt;b&gt;friends&lt;/b&gt;" in mail.html and "&amp;" in mail.html
    assert "Hi <script>alert(1)</script> & <b>friends</b>" in mail.text, "plain text shows what was typed"


@pytest.mark.parametrize("field, source", [
    ("body", "{{ ''.__class__.__mro__ }}"),
    ("body", "{{ ''.__class__.__mro__[1].__subclasses__() }}"),
    ("body", "{{ client.__class__ }}"),
    ("body", "{{ range.__globals__ }}"),
    ("body", "{{ client.update({'email': 'evil@example.com'}) }}"),
    ("body", "{{ self._TemplateReference__context }}"),
    ("body", "{{ 'x' * 100000000 }}"),
    ("body", "{{ 2 ** 100000000 }}"),
    ("body", "{{ (10 ** 60) ** 60 }}"),
    ("body", "{{ (10 ** 600) * (10 ** 600) }}"),
    ("body", "{% for i in range(10000000) %}x{% endfor %}"),
    ("body", "{{ config }}"),
    ("body", "{{ first_name "),
    ("body", "{% for %}"),
    ("body", "{{ 1 / 0 }}"),
    ("subject", "{{ ''.__class__.__mro__ }}"),
    ("subject", "{% if %}"),
])
def test_template_injection_and_broken_templates_fail_safely(session, field, source):
    c = f.client(session)
    session.commit()
    message = {"subject": "Hello", "body": "Hello"} | {field: source}
    with pytest.raises(ValidationError) as caught:
        send(session, c.id, save_message=True, **message)
    assert caught.value.field == field
    session.rollback()
    assert count(session, OutboxEmail) == 0 and count(session, EmailTemplate) == 0


@pytest.mark.parametrize("source", [
    "{{ '%5000000s' % 'a' }}",
    "{{ '%*d' % (5000000, 1) }}",
    "{{ '{:>5000000}'.format('') }}",
    "{{ '{:>{w}}'.format('', w=5000000) }}",
    "{{ ''.ljust(5000000) }}",
    "{{ 'x'.zfill(5000000) }}",
    "{{ '\t'.expandtabs(5000000) }}",
    "{{ ('y' * 2000).replace('', 'y' * 2000) }}",
    "{{ ('y' * 2000)|replace('', 'y' * 2000) }}",
    "{{ ('y' * 2000).join('x' * 2000) }}",
    "{{ ('x' * 2000)|list|join('y' * 2000) }}",
    "{{ ''|center(5000000) }}",
    "{{ 'a\nb'|indent(5000000) }}",
    "{{ '%5000000s'|format('a') }}",
    "{{ ['x' * 200000] * 100 }}",
    "{% set a = 'x' * 200000 %}{{ a ~ a }}",
    "{% set a = 'x' * 200000 %}{{ a + a }}",
])
def test_a_message_that_would_build_a_huge_text_is_refused_before_building_it(source):
    """Each of these builds megabytes (gigabytes with a larger number) before the rendered length
    could be checked: the sandbox must refuse them up front."""
    with pytest.raises(ValidationError) as caught:
        render_written("body", source, {"first_name": "Ann"})
    assert "forbids" in caught.value.rule, caught.value.rule


def test_a_loop_printing_a_long_text_stops_at_the_limit():
    source = "{% set a = 'x' * 200000 %}{% for i in range(1000) %}{% for j in range(1000) %}{{ a }}{% endfor %}" \
             "{% endfor %}"
    with pytest.raises(ValidationError, match="renders to more than"):
        render_written("body", source, {})


def test_ordinary_formatting_still_works():
    source = ("{{ '%05.1f' % 3.14159 }} {{ '{:>4}'.format('x') }} {{ 'a,b'.replace(',', ';') }} "
              "{{ ', '.join(['a', 'b']) }} {{ 'x'|center(5) }}|{{ ['q', 'r']|join('-') }} {{ '%s-%s'|format(1, 2) }} "
              "{{ 'ab'|replace('a', 'c') }} {{ first_name ~ '!' }} {{ [1] + [2] }}")
    assert render_written("body", source, {"first_name": "Ann"}) == \
        "003.1    x a;b a, b   x  |q-r 1-2 cb Ann! [1, 2]"


def test_the_same_request_twice_queues_one_email(session):
    c = f.client(session)
    first = send(session, c.id, subject="Hi", body="Hello")
    again = send(session, c.id, subject="Hi", body="Hello")
    assert first.outcome == "queued" and again.outcome == "already_queued" and not again.email_ids
    assert count(session, OutboxEmail) == 1


def test_save_message_keeps_the_written_text_as_a_template(session):
    c = f.client(session)
    done = send(session, c.id, subject="Maintenance on {{ first_name }}'s server", body="Tonight.",
                save_message=True)
    saved = session.get(EmailTemplate, done.saved_template_id)
    assert saved.name == "Maintenance on {{ first_name }}'s server"
    assert saved.subject == "Maintenance on {{ first_name }}'s server" and saved.body == "Tonight."
    named = send(session, c.id, "k2", subject="Hi", body="Body", save_message=True, save_as="Greeting")
    assert session.get(EmailTemplate, named.saved_template_id).name == "Greeting"
    # the same text under the same name again is a no-op
    same = send(session, c.id, "k3", subject="Hi", body="Body", save_message=True, save_as="Greeting")
    assert same.saved_template_id == named.saved_template_id
    assert count(session, EmailTemplate) == 2


def test_an_existing_name_with_another_text_is_refused_and_nothing_is_written(session):
    c = f.client(session)
    send(session, c.id, "k1", subject="Hi", body="Body", save_message=True, save_as="Greeting")
    session.commit()
    with pytest.raises(ValidationError) as caught:
        send(session, c.id, "k2", subject="Hi", body="Another body", save_message=True, save_as="Greeting")
    assert caught.value.field == "save_as"
    session.rollback()
    assert count(session, OutboxEmail) == 1
    assert session.scalars(select(EmailTemplate.body)).all() == ["Body"]


def test_a_saved_template_is_sent_by_name(session):
    c = f.client(session, first_name="Grace")
    session.add(EmailTemplate(name="Greeting", subject="Hi {{ first_name }}", body="Hello {{ full_name }}",
                              created_at=NOW))
    session.flush()
    done = send(session, c.id, template="Greeting")
    assert done.template == "client_message"
    mail = rendered(session, done.email_ids[0])
    assert mail.subject == "Hi Grace" and "Hello Grace Lovelace" in mail.text


def test_a_file_template_that_needs_only_the_client_is_sent_by_name(session):
    c = f.client(session, email="grace@example.com")
    contact(session, c, "team@example.com", general_emails=True)
    done = send(session, c.id, template="client_signup")
    assert done.template == "client_signup"
    mail = rendered(session, done.email_ids[0])
    assert "Welcome to Example Hosting" == mail.subject and "grace@example.com" in mail.text
    assert mail.cc == ["team@example.com"]


@pytest.mark.parametrize("kwargs, field", [
    ({"template": "invoice_created"}, "template"),  # needs an invoice
    ({"template": "no_such_template"}, "template"),
    ({"template": "password_reset"}, "template"),  # needs a token: only send_password_reset_email
    ({"template": "client_message"}, "template"),
    ({"template": "client_signup", "subject": "x"}, "template"),
    ({"template": "client_signup", "save_message": True}, "save_message"),
    ({"subject": "Hi"}, "body"),
    ({"body": "Hi"}, "subject"),
    ({"subject": "  ", "body": "Hi"}, "subject"),
    ({"subject": "x" * 501, "body": "Hi"}, "subject"),
    ({"subject": "Hi", "body": "Hi", "save_as": "Name"}, "save_as"),
    ({"subject": "Hi", "body": "Hi", "save_message": True, "save_as": "n" * 101}, "save_as"),
    ({"template": {"name": "x"}}, "template"),
])
def test_bad_requests_are_refused(session, kwargs, field):
    c = f.client(session)
    with pytest.raises(ValidationError) as caught:
        send(session, c.id, **kwargs)
    assert caught.value.field == field


def test_an_unknown_client_or_one_without_email_is_refused(session):
    with pytest.raises(NotFound):
        send(session, 999, subject="Hi", body="Hi")
    c = f.client(session, email="")
    with pytest.raises(ValidationError, match="email"):
        send(session, c.id, subject="Hi", body="Hi")


def test_delivery_logs_the_message_as_sent_one_by_one_and_in_batches(session):
    c = f.client(session, first_name="Ada", email="ada@example.com")
    one = send(session, c.id, "k1", subject="One {{ first_name }}", body="First")
    two = send(session, c.id, "k2", subject="Two", body="Second {{ last_name }}")
    three = send(session, c.id, "k3", template="client_signup")
    session.commit()
    mailer = MemoryMailer()
    deliver_email(session, one.email_ids[0], mailer, sender=SENDER, now=NOW)
    batch = deliver_emails(session, [two.email_ids[0], three.email_ids[0]], mailer, sender=SENDER, now=NOW)
    session.commit()
    assert batch.count("sent") == 2 and not batch.failed
    assert sorted(m["Subject"] for m in mailer.sent) == ["One Ada", "Two", "Welcome to Example Hosting"]
    logs = {log.subject: log for log in session.scalars(select(EmailLog))}
    assert "Second Lovelace" in logs["Two"].body_text and logs["Two"].to_address == "ada@example.com"
    assert logs["One Ada"].client_id == c.id


def test_the_message_shows_the_client_as_it_is_when_sent(session):
    c = f.client(session, first_name="Ada")
    done = send(session, c.id, subject="Hi {{ first_name }}", body="Hi")
    c.first_name = "Augusta"
    session.flush()
    assert rendered(session, done.email_ids[0]).subject == "Hi Augusta"


def test_the_same_request_twice_at_once_queues_one_email_and_saves_once(server_engine, server_session):
    c = f.client(server_session)
    server_session.commit()
    work = partial(send_client_email, client_id=c.id, subject="Hi", body="Hello", save_message=True,
                   save_as="Greeting", dedupe_key="send_client_email:message:m1", now=NOW)
    results = race(server_engine, *[lambda s: work(s) for _ in range(3)])
    assert sorted(r.outcome for r in results) == ["already_queued", "already_queued", "queued"]
    server_session.rollback()
    assert count(server_session, OutboxEmail) == 1 and count(server_session, EmailTemplate) == 1


def test_two_requests_saving_one_name_at_once_keep_the_first_text(server_engine, server_session):
    c = f.client(server_session)
    server_session.commit()
    outcomes: list[str] = []

    def save(body: str, key: str, session: Session):
        try:
            send_client_email(session, c.id, subject="Hi", body=body, save_message=True, save_as="Greeting",
                              dedupe_key=key, now=NOW)
            outcomes.append("saved " + body)
        except ValidationError:
            session.rollback()
            outcomes.append("refused")

    race(server_engine, partial(save, "Body A", "k1"), partial(save, "Body B", "k2"))
    assert sorted(outcomes)[0] == "refused" and len(outcomes) == 2
    server_session.rollback()
    saved_body = server_session.scalars(select(EmailTemplate.body)).one()
    assert outcomes.count("saved " + saved_body) == 1
    assert count(server_session, OutboxEmail) == 1, "the refused request queued nothing"
