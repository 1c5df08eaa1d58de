"""Structured logs: one JSON object per line when no one watches the terminal, and never a secret.

``configure_logging()`` installs one handler on the root logger: JSON lines when stderr is not
a terminal (a service manager, a container, a pipe), readable text when it is; ``LOG_FORMAT``
(``json`` or ``text``) overrides. Every record is bounded and masked first (``mask_record``),
with the rules of ``domain.redaction``: secret keys at any depth, card numbers, URL passwords.

Bounded *before* masking, so a hostile value costs the same as a short one: each argument of
the message is cut to ``MAX_ARGUMENT`` characters (a dict, a list or a Dramatiq message is masked
key by key, each text in it cut to ``MAX_SHOWN``), the formatted message to ``MAX_MESSAGE``, each line of
a traceback to ``MAX_TRACEBACK_LINE`` and the traceback to ``MAX_TRACEBACK``; a cut says how long
the text was. Masking is one linear scan: the time per record is bounded whatever it carried.
"""

from __future__ import annotations

import json
import logging
import numbers
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import IO, Any

from dramatiq import Message
from dramatiq.broker import MessageProxy
from dramatiq.middleware import Middleware

from ..domain.redaction import MASK, MAX_SHOWN, is_secret_key, mask, mask_lines, mask_text, shorten

__all__ = ["MASK", "is_secret_key", "redact", "redact_text", "mask_record", "RedactFilter", "JsonFormatter",
           "TextFormatter", "configure_logging", "StructuredLogging", "LONG_RUNNING_COMMANDS", "command_log_level",
           "LoggingSetupError"]

#: Characters of one argument of a log message (a text, or an object's text): a sentence such
#: as a refusal's reason fits; a value inside a dict or a list is cut at MAX_SHOWN (200).
MAX_ARGUMENT = 1_000
#: Characters of a formatted log message, after its arguments were cut.
MAX_MESSAGE = 4_000
#: Characters of one line of a traceback (or stack), and of the whole traceback.
MAX_TRACEBACK_LINE = 1_000
MAX_TRACEBACK = 20_000

#: Attributes every LogRecord has; anything else on a record came from ``extra=``.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
_HANDLER_MARK = "_billingworker_handler"
#: Set on a record once ``mask_record`` has bounded and masked it in place.
_MASKED_MARK = "_billingworker_masked"


def redact_text(text: str, limit: int | None = MAX_MESSAGE) -> str:
    """``text`` cut to ``limit`` characters, then with card numbers, secret assignments and URL
    passwords masked (``domain.redaction.mask_text``)."""
    return mask_text(text, limit)


def redact(value: Any) -> Any:
    """A copy of ``value`` (str, number, dict, list...) bounded, with every secret in it masked."""
    return mask(value)


class _Shown:
    """An argument of a log message as the message may print it: its text cut to MAX_ARGUMENT
    characters (and masked with the message). Computed once, when the message is formatted."""

    def __init__(self, value: Any) -> None:
        self.value = value

    def __str__(self) -> str:
        return shorten(str(self.value), MAX_ARGUMENT)

    def __repr__(self) -> str:
        return shorten(repr(self.value), MAX_ARGUMENT)


class _ShownMessage(_Shown):
    """A Dramatiq message (``actor(arg, key=value)`` in Dramatiq's own lines): its arguments
    masked key by key, so a password nested in a dict of its kwargs never reaches the text."""

    def __str__(self) -> str:
        args, kwargs = mask(list(self.value.args)), mask(dict(self.value.kwargs))
        params = [repr(arg) for arg in args] + [f"{key}={value!r}" for key, value in kwargs.items()]
        return f"{shorten(str(self.value.actor_name), MAX_SHOWN)}({', '.join(params)})"

    __repr__ = __str__


def _bounded(arg: Any) -> Any:
    """A log message argument with its size bounded: numbers as they are (``%d`` and ``%.2f``
    still work), texts cut, containers masked, anything else cut when printed."""
    if arg is None or isinstance(arg, bool | float):
        return arg
    if isinstance(arg, int):
        return arg if arg.bit_length() <= 64 else _Shown(f"<an integer of {arg.bit_length()} bits>")
    if isinstance(arg, numbers.Number):
        return arg
    if isinstance(arg, str):
        return shorten(arg, MAX_ARGUMENT)
    if isinstance(arg, Message | MessageProxy):
        return _ShownMessage(arg)
    if isinstance(arg, Mapping | list | tuple | set | frozenset):
        return mask(arg)
    return _Shown(arg)


def _message(record: logging.LogRecord) -> str:
    """The record's message, its arguments bounded before it is formatted, then the whole cut
    to MAX_MESSAGE and masked."""
    msg = record.msg if isinstance(record.msg, str) else str(_bounded(record.msg))
    args = record.args
    try:
        if isinstance(args, Mapping):
            text = msg % {key: MASK if isinstance(key, str) and is_secret_key(key) else _bounded(value)
                          for key, value in args.items()}
        elif args:
            text = msg % tuple(_bounded(arg) for arg in args)
        else:
            text = msg
    except Exception as exc:  # noqa: BLE001 - a bad format string: keep the line, masked, say why
        text = f"{shorten(msg, MAX_MESSAGE // 2)} (its arguments could not be formatted: {type(exc).__name__})"
    return mask_text(text, MAX_MESSAGE)


def mask_record(record: logging.LogRecord) -> None:
    """Bound and mask ``record`` in place (message, extra fields, traceback, stack), once: every
    handler after this one sees only the masked record."""
    if getattr(record, _MASKED_MARK, False):
        return
    record.msg, record.args = _message(record), None
    for key, value in record_extras(record).items():
        setattr(record, key, MASK if is_secret_key(key) else mask(value))
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = mask_lines(record.exc_text, line_limit=MAX_TRACEBACK_LINE, limit=MAX_TRACEBACK)
    if record.stack_info:
        record.stack_info = mask_lines(record.stack_info, line_limit=MAX_TRACEBACK_LINE, limit=MAX_TRACEBACK)
    setattr(record, _MASKED_MARK, True)


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields a caller passed with ``extra=``."""
    return {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS and not k.startswith("_")}


class RedactFilter(logging.Filter):
    """Bounds and masks a record in place (``mask_record``): every handler after it, ours or
    another (a tracker, a file), sees the masked record only."""

    def filter(self, record: logging.LogRecord) -> bool:
        mask_record(record)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, process, thread,
    then the ``extra`` fields (``actor``, ``message_id``, ``client_id``, ``outcome``,
    ``duration_ms`` for jobs) and ``exception`` when there is one. The record is bounded and
    masked here too, so the formatter is safe even on a handler without ``RedactFilter``."""

    def format(self, record: logging.LogRecord) -> str:
        mask_record(record)
        data: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            "thread": record.threadName,
        }
        for key, value in record_extras(record).items():
            data[key if key not in data else f"extra_{key}"] = value
        if record.exc_text:
            data["exception"] = record.exc_text
        if record.stack_info:
            data["stack"] = record.stack_info
        return json.dumps(data, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """The human format (time, level, logger, message), bounded and masked."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        mask_record(record)
        return super().format(record)


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


#: The CLI commands that run until stopped: they log what they do at INFO unless told otherwise
#: (the Procfile's scheduler must say what each tick decided); every other command is quiet
#: (WARNING) so that its output is its table.
LONG_RUNNING_COMMANDS = frozenset({"scheduler", "metrics", "console"})
_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
_FORMATS = ("json", "text")


class LoggingSetupError(ValueError):
    """``LOG_LEVEL`` or ``LOG_FORMAT`` holds a value logging cannot use; the message names it."""


def command_log_level(command: str | None, *, verbose: bool = False, environ: Mapping[str, str] | None = None) -> str:
    """The root log level of a CLI command: ``LOG_LEVEL`` when set, else INFO for a long-running
    command (LONG_RUNNING_COMMANDS) or with ``-v``, else WARNING. ``-v`` never makes a command
    quieter than ``LOG_LEVEL`` asks (``LOG_LEVEL=DEBUG -v`` stays DEBUG)."""
    environ = os.environ if environ is None else environ
    wanted = environ.get("LOG_LEVEL", "").strip().upper()
    if wanted and wanted not in _LEVELS:
        raise LoggingSetupError(f"LOG_LEVEL: {wanted!r} is not a log level (one of {', '.join(_LEVELS)})")
    fmt = environ.get("LOG_FORMAT", "").strip().lower()
    if fmt and fmt not in _FORMATS:
        raise LoggingSetupError(f"LOG_FORMAT: {fmt!r} is not json or text")
    if verbose:
        return "DEBUG" if wanted == "DEBUG" else "INFO"
    if wanted:
        return wanted
    return "INFO" if command in LONG_RUNNING_COMMANDS else "WARNING"


class StructuredLogging(Middleware):
    """Switches each ``dramatiq`` worker process to ``configure_logging()`` once it has booted
    (after Dramatiq set up its own logging to the parent's pipe), keeping Dramatiq's level."""

    def after_process_boot(self, broker) -> None:
        configure_logging(level=os.environ.get("LOG_LEVEL") or logging.getLogger().level or None)
