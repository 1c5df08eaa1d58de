"""Structured logs: one JSON object per line when no one watches the terminal, and never a secret.

``configure_logging()`` installs one handler on the root logger: JSON lines when stderr is not
a terminal (a service manager, a container, a pipe), readable text when it is; ``LOG_FORMAT``
(``json`` or ``text``) overrides. Every record passes through ``redact`` first: anything that
looks like a card number (13 to 19 digits, spaces or dashes allowed) keeps only its last four
digits, and the values of keys named like a password, token or secret become ``***``, whether
they come as ``extra`` fields, as ``key=value`` text, or as the password of a URL.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

from dramatiq.middleware import Middleware

MASK = "***"
#: A key whose name contains one of these holds a secret (``password``, ``gateway_token``...).
SECRET_KEY_PARTS = ("password", "passwd", "token", "secret", "apikey", "api_key", "authorization")
#: 13 to 19 digits, single spaces or dashes between them, not part of a longer word or number.
CARD_NUMBER = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?!\w)")
#: ``password=x``, ``"token": "x"``, ``'api_secret': 'x'``, ``?token=x&`` ...
SECRET_ASSIGNMENT = re.compile(
    r"(?i)(\b[\w-]*(?:password|passwd|token|secret|api_?key)[\w-]*[\"']?\s*[:=]\s*[\"']?)([^\s\"',;&)}\]]+)")
#: The password of ``scheme://user:password@host``.
URL_PASSWORD = re.compile(r"(\b[a-z][\w+.-]*://[^:/\s@]*:)([^@\s/]+)(@)", re.IGNORECASE)

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_HANDLER_MARK = "_billingworker_handler"


def _mask_card(match: re.Match[str]) -> str:
    digits = re.sub(r"\D", "", match.group(0))
    return f"****{digits[-4:]}"


def redact_text(text: str) -> str:
    """``text`` with card numbers, secret assignments and URL passwords masked."""
    text = CARD_NUMBER.sub(_mask_card, text)
    text = URL_PASSWORD.sub(rf"\1{MASK}\3", text)
    return SECRET_ASSIGNMENT.sub(rf"\1{MASK}", text)


def is_secret_key(key: str) -> bool:
    key = key.lower()
    return any(part in key for part in SECRET_KEY_PARTS)


def redact(value: Any) -> Any:
    """A copy of ``value`` (str, number, dict, list...) with every secret in it masked."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return value
    if isinstance(value, int):
        return redact_text(str(value)) if 13 <= len(str(abs(value))) <= 19 else value
    if isinstance(value, dict):
        return {k: MASK if isinstance(k, str) and is_secret_key(k) else redact(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [redact(v) for v in value]
    return redact_text(str(value))


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class RedactFilter(logging.Filter):
    """Masks secrets in a record in place (message, extras, exception text): every handler after
    it, ours or another (a tracker, a file), sees the masked record only."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string is logging's to report, not ours
            return True
        record.msg, record.args = redact_text(message), None
        for key, value in record_extras(record).items():
            setattr(record, key, MASK if is_secret_key(key) else redact(value))
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process, thread,
    then the ``extra`` fields (``actor``, ``message_id``, ``client_id``, ``outcome``,
    ``duration_ms`` for jobs) and ``exception`` when there is one. Secrets are masked here too,
    so the formatter is safe even on a handler without ``RedactFilter``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": redact_text(record.getMessage()),
            "process": record.process,
            "thread": record.threadName,
        }
        for key, value in record_extras(record).items():
            data[key if key not in data else f"extra_{key}"] = MASK if is_secret_key(key) else redact(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            data["exception"] = redact_text(record.exc_text)
        if record.stack_info:
            data["stack"] = redact_text(self.formatStack(record.stack_info))
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The human format (time, level, logger, message), with secrets masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return redact_text(super().format(record))


def _is_terminal(stream: IO[str] | None) -> bool:
    # In a Dramatiq worker process sys.stderr is a pipe to the parent, which writes to the real
    # stderr: ask the process's original stderr then.
    stream = stream if stream is not None else sys.__stderr__
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (OSError, ValueError):
        return False


def configure_logging(level: int | str | None = None, *, fmt: str | None = None,
                      stream: IO[str] | None = None) -> logging.Handler:
    """Route every log record through one redacting handler on the root logger; returns it.

    ``fmt`` is ``json`` or ``text``; by default ``LOG_FORMAT``, else JSON unless stderr is a
    terminal. ``level`` defaults to ``LOG_LEVEL``, else INFO. The root logger's plain stream
    handlers (``logging.basicConfig``'s, Dramatiq's) are replaced, so nothing is logged twice;
    calling it again replaces the handler it installed before.
    """
    fmt = (fmt or os.environ.get("LOG_FORMAT") or ("text" if _is_terminal(stream) else "json")).lower()
    if fmt not in ("json", "text"):
        raise ValueError(f"LOG_FORMAT: {fmt!r} is not json or text")
    level = level if level is not None else os.environ.get("LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter())
    setattr(handler, _HANDLER_MARK, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_MARK, False) or type(old) is logging.StreamHandler:
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    return handler


class StructuredLogging(Middleware):
    """Switches each ``dramatiq`` worker process to ``configure_logging()`` once it has booted
    (after Dramatiq set up its own logging to the parent's pipe), keeping Dramatiq's level."""

    def after_process_boot(self, broker) -> None:
        configure_logging(level=os.environ.get("LOG_LEVEL") or logging.getLogger().level or None)
