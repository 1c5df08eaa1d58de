"""The mail transport seam: URL parsing, the folder and memory twins, and a real SMTP server."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import smtplib
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from billingworker.adapters.mailer import MEMORY_MAILER, FolderMailer, MemoryMailer, SmtpMailer, mailer_from_url
from billingworker.domain.errors import ValidationError
from billingworker.domain.messaging.emails import RenderedEmail
from billingworker.domain.messaging.mime import build_message

RENDERED = RenderedEmail(
    template="invoice_created",
    subject="Invoice #1001 from Acme Hosting",
    text="Dear Ada,\nYour invoice is ready.\n",
    html="<p>Dear Ada,</p><p>Your invoice is <b>ready</b>.</p>\n",
    to=["ada@example.com"],
    cc=["accounts@example.com"],
)
MESSAGE_ID = "<outbox-12.billingworker@acme.test>"


def message() -> EmailMessage:
    return build_message(RENDERED, sender="Acme Billing <billing@acme.test>", message_id=MESSAGE_ID,
                         date=datetime(2024, 5, 1, 9, 0, tzinfo=UTC))


def received(rendered: RenderedEmail, sender: str = "Acme Billing <billing@acme.test>") -> EmailMessage:
    """What a receiver parses out of the bytes we would send."""
    raw = build_message(rendered, sender=sender, message_id=MESSAGE_ID).as_bytes()
    return email.message_from_bytes(raw, policy=email.policy.default)


def test_non_ascii_names_subjects_and_bodies_arrive_intact():
    rendered = dataclasses.replace(RENDERED, subject="Facture n° 1001 — Société Générale",
                                   text="Chère Zoë,\nvotre facture est prête : 12,00 €\n",
                                   html="<p>Chère Zoë, 12,00 €</p>\n", to=["Zoë Müller <zoe@example.com>"])
    msg = received(rendered, sender="Café Hébergement <billing@acme.test>")
    assert msg["Subject"] == "Facture n° 1001 — Société Générale"
    assert msg["From"].addresses[0].display_name == "Café Hébergement"
    assert msg["To"].addresses[0].display_name == "Zoë Müller"
    assert msg.get_body(("plain",)).get_content() == "Chère Zoë,\nvotre facture est prête : 12,00 €\n"
    assert "12,00 €" in msg.get_body(("html",)).get_content()


@pytest.mark.parametrize("field, change", [
    ("to", {"to": ["ada@example.com\r\nBcc: everyone@example.com"]}),
    ("cc", {"cc": ["x@example.com\nBcc: everyone@example.com"]}),
    ("subject", {"subject": "Hello\r\nBcc: everyone@example.com"}),
    ("to", {"to": ["not an address"]}),
    # any control character ends some receivers' header block (VT, FF, FS...), not only CR/LF
    ("to", {"to": ["ada@example.com\x0bBcc: everyone@example.com"]}),
    ("to", {"to": ["Ada\x0c <ada@example.com>"]}),
    ("cc", {"cc": ["x@example.com\x1cSubject: forged"]}),
    ("subject", {"subject": "Hello\x0bBcc: everyone@example.com"}),
    ("subject", {"subject": "Hello\u2028Bcc: everyone@example.com"}),
    ("subject", {"subject": "nul\x00byte"}),
    # a whole header where an address should be: refused when built, never retried at send
    ("to", {"to": ["Bcc: everyone@example.com"]}),
    ("to", {"to": ["ada@example.com, bob@example.com"]}),
])
def test_header_injection_and_bad_addresses_are_refused(field, change):
    with pytest.raises(ValidationError) as err:
        build_message(dataclasses.replace(RENDERED, **change), sender="a@b.c", message_id="<1@b.c>")
    assert err.value.field == field


# --- mailer_from_url ---------------------------------------------------------------------------


def test_smtp_url_defaults_to_port_25_without_tls():
    m = mailer_from_url("smtp://mail.example.com")
    assert isinstance(m, SmtpMailer)
    assert (m.host, m.port, m.security, m.username, m.password) == ("mail.example.com", 25, "none", "", "")


def test_smtp_url_decodes_user_and_password():
    m = mailer_from_url("smtp://billing%40acme.test:p%40ss%3Aw%2Frd@mail.acme.test:2525")
    assert isinstance(m, SmtpMailer)
    assert (m.username, m.password, m.host, m.port) == ("billing@acme.test", "p@ss:w/rd", "mail.acme.test", 2525)
    assert "p@ss" not in repr(m)


@pytest.mark.parametrize("query", ["starttls=1", "starttls=true", "security=starttls", "security=STARTTLS"])
def test_smtp_url_starttls(query):
    m = mailer_from_url(f"smtp://u:p@mail.example.com:587?{query}")
    assert isinstance(m, SmtpMailer)
    assert (m.security, m.port) == ("starttls", 587)


def test_smtp_url_timeout():
    m = mailer_from_url("smtp://mail.example.com?timeout=5")
    assert isinstance(m, SmtpMailer) and m.timeout == 5.0


def test_smtps_url_is_implicit_tls_on_465():
    m = mailer_from_url("smtps://u:p@mail.example.com")
    assert isinstance(m, SmtpMailer)
    assert (m.security, m.port) == ("ssl", 465)
    m2 = mailer_from_url("smtps://mail.example.com:1465")
    assert isinstance(m2, SmtpMailer) and m2.port == 1465


def test_file_urls(tmp_path):
    absolute = mailer_from_url(f"file://{tmp_path}/outbox")
    assert isinstance(absolute, FolderMailer) and absolute.path == tmp_path / "outbox"
    relative = mailer_from_url("file://var/mail")
    assert isinstance(relative, FolderMailer) and relative.path == Path("var/mail")


def test_memory_url_is_one_process_wide_mailer():
    m = mailer_from_url("memory://")
    assert isinstance(m, MemoryMailer)
    assert m is MEMORY_MAILER and mailer_from_url("memory://") is m


@pytest.mark.parametrize("url", ["http://mail.example.com", "smtp://", "smtp://h?security=tls", "file://",
                                 "smtp://h:notaport", "mailgun://key@x"])
def test_bad_urls_are_refused(url):
    with pytest.raises(ValidationError) as err:
        mailer_from_url(url)
    assert err.value.field == "mail_url"


def test_unknown_security_is_refused():
    with pytest.raises(ValidationError):
        SmtpMailer("h", security="tls")  # type: ignore[arg-type]


# --- build_message -----------------------------------------------------------------------------


def test_build_message_is_multipart_alternative_with_the_given_message_id():
    msg = email.message_from_bytes(message().as_bytes(), policy=email.policy.default)
    assert msg.get_content_type() == "multipart/alternative"
    assert msg["Message-ID"] == MESSAGE_ID
    assert msg["From"] == "Acme Billing <billing@acme.test>"
    assert msg["To"] == "ada@example.com"
    assert msg["Cc"] == "accounts@example.com"
    assert msg["Subject"] == "Invoice #1001 from Acme Hosting"
    assert msg["Date"] == "Wed, 01 May 2024 09:00:00 +0000"
    assert msg["Auto-Submitted"] == "auto-generated"
    text, html = msg.iter_parts()
    assert text.get_content_type() == "text/plain" and "Your invoice is ready." in text.get_content()
    assert html.get_content_type() == "text/html" and "<b>ready</b>" in html.get_content()


def test_build_message_needs_a_recipient():
    with pytest.raises(ValidationError):
        build_message(RenderedEmail("t", "s", "x", "y"), sender="a@b.c", message_id="<1@b.c>")


# --- FolderMailer and MemoryMailer -------------------------------------------------------------


def test_folder_mailer_writes_one_file_per_message_id(tmp_path):
    mailer = FolderMailer(tmp_path / "mail")
    mailer.send(message())
    mailer.send(message())  # a re-send overwrites, it does not duplicate
    files = list((tmp_path / "mail").iterdir())
    assert [f.name for f in files] == ["outbox-12.billingworker@acme.test.eml"]
    parsed = email.message_from_bytes(files[0].read_bytes(), policy=email.policy.default)
    assert parsed["Message-ID"] == MESSAGE_ID
    assert parsed["Subject"] == "Invoice #1001 from Acme Hosting"
    assert [p.get_content_type() for p in parsed.iter_parts()] == ["text/plain", "text/html"]


def test_memory_mailer_keeps_what_it_sent():
    mailer = MemoryMailer()
    mailer.send(message())
    assert [m["Message-ID"] for m in mailer.sent] == [MESSAGE_ID]


# --- a real SMTP server ------------------------------------------------------------------------


class Collector:
    """An aiosmtpd handler that keeps every envelope it is given."""

    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 - aiosmtpd's hook name
        self.envelopes.append(envelope)
        return "250 OK"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (
        b"billing@acme.test", b"p@ss:w/rd")
    # handled=False: let aiosmtpd answer 535 itself (its default assumes we already replied).
    return AuthResult(success=ok, handled=False)


@pytest.fixture
def smtp_server() -> Iterator[tuple[Collector, int]]:
    handler = Collector()
    port = _free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port, authenticator=_authenticator,
                            auth_require_tls=False)
    controller.start()
    try:
        yield handler, port
    finally:
        controller.stop()


def test_smtp_mailer_delivers_to_a_real_server(smtp_server):
    # Given a real SMTP server that wants a login
    handler, port = smtp_server
    mailer = mailer_from_url(f"smtp://billing%40acme.test:p%40ss%3Aw%2Frd@127.0.0.1:{port}?timeout=10")

    # When a message is sent through it
    mailer.send(message())

    # Then the server got it, for the recipient and the cc, with both parts and our Message-ID
    assert len(handler.envelopes) == 1
    envelope = handler.envelopes[0]
    assert envelope.mail_from == "billing@acme.test"
    assert sorted(envelope.rcpt_tos) == ["accounts@example.com", "ada@example.com"]
    received = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
    assert received["Message-ID"] == MESSAGE_ID
    assert received.get_content_type() == "multipart/alternative"
    text, html = received.iter_parts()
    assert "Your invoice is ready." in text.get_content()
    assert "<b>ready</b>" in html.get_content()


def test_smtp_mailer_raises_when_the_login_is_refused(smtp_server):
    handler, port = smtp_server
    mailer = SmtpMailer("127.0.0.1", port, username="billing@acme.test", password="wrong", timeout=10)
    with pytest.raises(smtplib.SMTPAuthenticationError) as err:
        mailer.send(message())
    assert err.value.smtp_code == 535
    assert handler.envelopes == []


def test_smtp_mailer_raises_when_no_server_answers():
    mailer = SmtpMailer("127.0.0.1", _free_port(), timeout=5)
    with pytest.raises(OSError):
        mailer.send(message())
