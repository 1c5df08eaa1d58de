"""Mail transport: one seam, ``Mailer.send(message)``, and its implementations.

- ``SmtpMailer``: a real SMTP server (plain, STARTTLS or implicit TLS).
- ``FolderMailer``: one ``.eml`` file per message (the demo and development default).
- ``MemoryMailer``: keeps messages in ``sent`` (the in-memory twin for tests).

``mailer_from_url`` picks one from ``MAIL_URL``. They implement the domain's ``Mailer`` port
(``domain/ports.py``); the message they send is built by ``domain/messaging/mime.py``.
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import smtplib
import ssl
import tempfile
import threading
from collections.abc import Iterator, Sequence
from email.message import EmailMessage, Message
from email.utils import make_msgid
from pathlib import Path
from typing import Literal, cast
from urllib.parse import parse_qs, unquote, urlsplit

from billingworker.domain.errors import ValidationError
from billingworker.domain.ports import Mailer

Security = Literal["none", "starttls", "ssl"]
SECURITIES: tuple[str, ...] = ("none", "starttls", "ssl")
#: Seconds an SMTP connection may wait for the server before it gives up.
DEFAULT_SMTP_TIMEOUT = 30.0


class SmtpMailer:
    """Sends through an SMTP server: one connection per message, or per batch with ``send_many``."""

    def __init__(self, host: str, port: int = 25, username: str = "", password: str = "",
                 security: Security = "none", timeout: float = DEFAULT_SMTP_TIMEOUT) -> None:
        if security not in SECURITIES:
            raise ValidationError("security", security, f"must be one of {', '.join(SECURITIES)}")
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.security = security
        self.timeout = timeout

    def __repr__(self) -> str:  # never show the password
        return f"SmtpMailer(host={self.host!r}, port={self.port}, security={self.security!r})"

    def _connect(self) -> smtplib.SMTP:
        smtp: smtplib.SMTP
        if self.security == "ssl":
            smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                    context=ssl.create_default_context())
        else:
            smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
        try:
            if self.security == "starttls":
                smtp.starttls(context=ssl.create_default_context())
            if self.username:
                smtp.login(self.username, self.password)
        except BaseException:
            smtp.close()
            raise
        return smtp

    def send(self, message: Message) -> None:
        """Send ``message``; raises ``smtplib.SMTPException`` or ``OSError`` if it was refused."""
        with self._connect() as smtp:
            smtp.send_message(message)

    def send_each(self, messages: Sequence[Message]) -> Iterator[BaseException | None]:
        """Send ``messages`` over one connection, yielding per message None (accepted) or the error.

        A message the server refuses does not stop the others (``RSET`` between them); a lost
        connection marks the message it happened on and every later one as not sent. Closing
        the generator early closes the connection and sends nothing more.
        """
        try:
            smtp = self._connect()
        except Exception as exc:  # noqa: BLE001 - nothing went
            yield from (exc for _ in messages)
            return
        with smtp:
            for index, message in enumerate(messages):
                try:
                    smtp.send_message(message)
                except smtplib.SMTPServerDisconnected as exc:
                    yield from (exc for _ in messages[index:])
                    return
                except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as exc:
                    yield exc
                    try:
                        smtp.rset()
                    except Exception as lost:  # noqa: BLE001 - the connection is gone: the rest did not go
                        yield from (lost for _ in messages[index + 1:])
                        return
                except Exception as exc:  # noqa: BLE001 - OSError, timeouts: the connection is unusable
                    yield from (exc for _ in messages[index:])
                    return
                else:
                    yield None


def _filename(message_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._@+-]", "_", message_id.strip().strip("<>"))
    return (safe or "message") + ".eml"


class FolderMailer:
    """Writes each message to ``<path>/<Message-ID>.eml``.

    The file name comes from the Message-ID, so re-sending the same email overwrites its file
    instead of adding a second one; the file is written whole (temp file + rename) or not at all.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FolderMailer({str(self.path)!r})"

    def send(self, message: Message) -> None:
        if message["Message-ID"] is None:
            message["Message-ID"] = make_msgid(domain="billingworker")
        self.path.mkdir(parents=True, exist_ok=True)
        target = self.path / _filename(str(message["Message-ID"]))
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(message.as_bytes())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class MemoryMailer:
    """Keeps every message in ``sent`` (thread-safe); the in-memory twin used by tests.

    What it keeps is what a receiver would get: the message's bytes parsed again, as an
    ``EmailMessage`` (so tests read ``get_body()``, decoded headers, the wire format).
    """

    def __init__(self) -> None:
        self.sent: list[EmailMessage] = []
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"MemoryMailer(sent={len(self.sent)})"

    def send(self, message: Message) -> None:
        received = email.message_from_bytes(message.as_bytes(), policy=email.policy.default)
        with self._lock:
            self.sent.append(cast(EmailMessage, received))


#: The process-wide ``memory://`` mailer, so tests can read what actors sent.
MEMORY_MAILER = MemoryMailer()


def _truthy(value: str) -> bool:
    return value.strip().lower() in ("1", "true", "yes", "on")


def mailer_from_url(url: str) -> Mailer:
    """The mailer ``url`` names.

    - ``smtp://user:pass@host:port`` (port 25 by default; ``?starttls=1`` or
      ``?security=starttls`` upgrades the connection; ``?timeout=`` in seconds)
    - ``smtps://user:pass@host:port`` (implicit TLS, port 465 by default)
    - ``file:///absolute/path`` or ``file://relative/path`` -> ``FolderMailer``
    - ``memory://`` -> the process-wide ``MemoryMailer`` (``MEMORY_MAILER``)

    User and password are URL-decoded (write ``@`` as ``%40``).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "memory":
        return MEMORY_MAILER
    if scheme == "file":
        path = unquote(parts.netloc + parts.path)
        if not path:
            raise ValidationError("mail_url", url, "needs a folder: file:///abs/path or file://relative/path")
        return FolderMailer(path)
    if scheme not in ("smtp", "smtps"):
        raise ValidationError("mail_url", url, "must start with smtp://, smtps://, file:// or memory://")
    if not parts.hostname:
        raise ValidationError("mail_url", url, "needs a host: smtp://user:password@host:port")
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    security: str = "ssl" if scheme == "smtps" else "none"
    if scheme == "smtp":
        if "security" in query:
            security = query["security"].strip().lower()
        elif _truthy(query.get("starttls", "")):
            security = "starttls"
    if security not in SECURITIES:
        raise ValidationError("mail_url", url, f"security must be one of {', '.join(SECURITIES)}")
    try:
        port = parts.port or (465 if security == "ssl" else 25)
        timeout = float(query.get("timeout", DEFAULT_SMTP_TIMEOUT))
    except ValueError:
        raise ValidationError("mail_url", url, "has an invalid port or timeout") from None
    return SmtpMailer(
        host=parts.hostname,
        port=port,
        username=unquote(parts.username or ""),
        password=unquote(parts.password or ""),
        security=cast(Security, security),  # checked against SECURITIES above
        timeout=timeout,
    )
