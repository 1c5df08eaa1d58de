"""A rendered email as a MIME message: ``build_message`` makes the multipart/alternative message
whose Message-ID the caller chooses, so that a re-send after a crash carries the same Message-ID
and receivers can de-duplicate. Pure: no transport here (that is the ``Mailer`` port).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, parseaddr

from ..errors import ValidationError
from .emails import RenderedEmail

#: Bodies go out as quoted-printable UTF-8: readable in the raw message, safe for any text.
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP
_UTF8_QP.header_encoding = QP


def build_message(rendered: RenderedEmail, *, sender: str, message_id: str,
                  date: datetime | None = None) -> Message:
    """A multipart/alternative message (plain text, then HTML) with the given Message-ID.

    The caller chooses ``message_id`` (stable per outbox row), so a re-send after a crash
    carries the same Message-ID. ``date`` (aware) becomes the Date header when given.

    Built with the ``email.mime`` classes: the ``EmailMessage`` API parses every header it is
    given, which made building the message a third of the CPU of delivering an email. What that
    parsing guarded against is checked here: a header value with a line break is refused (header
    injection), and non-ASCII names and subjects are RFC 2047-encoded.
    """
    if not rendered.to:
        raise ValidationError("to", rendered.to, "needs at least one recipient")
    message = MIMEMultipart("alternative")
    message["From"] = _address_header("from", [sender])
    message["To"] = _address_header("to", rendered.to)
    if rendered.cc:
        message["Cc"] = _address_header("cc", rendered.cc)
    message["Subject"] = _text_header("subject", rendered.subject)
    message["Message-ID"] = _text_header("message_id", message_id)
    if date is not None:
        message["Date"] = format_datetime(date)
    # RFC 3834: tells auto-responders not to answer a billing notice.
    message["Auto-Submitted"] = "auto-generated"
    message.attach(MIMEText(rendered.text, "plain", _UTF8_QP))
    message.attach(MIMEText(rendered.html, "html", _UTF8_QP))
    return message


#: Any C0/C1 control character or Unicode line/paragraph separator: some receivers end the
#: header block at a VT, FF or FS as well as at CR/LF, losing Subject and Message-ID.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: What we accept as the address part: no spaces, no header or list punctuation.
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\\\"]+@[^\s@<>()\[\],;:\\\".][^\s@<>()\[\],;:\\\"]*")


def _no_line_breaks(field: str, value: str) -> str:
    found = _CONTROL.search(value)
    if found:
        raise ValidationError(field, value[:200], f"must not contain the control character U+{ord(found.group()):04X}"
                              " (header injection)")
    return value


def _text_header(field: str, value: str) -> str | Header:
    _no_line_breaks(field, value)
    return value if value.isascii() else Header(value, _UTF8_QP)


def _address_header(field: str, addresses: Sequence[str]) -> str:
    out = []
    for address in addresses:
        name, email_address = parseaddr(_no_line_breaks(field, address))
        raw = address.strip()
        # parseaddr is lenient ("Bcc: x@y", "a@b, c@d" give one address): take only what it read whole.
        whole = raw == email_address or raw.endswith(f"<{email_address}>")
        if not whole or not _ADDRESS.fullmatch(email_address):
            raise ValidationError(field, address[:200], "is not an email address")
        out.append(formataddr((name, email_address), charset="utf-8") if name else email_address)
    return ", ".join(out)
