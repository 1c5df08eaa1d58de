"""Structured logs: JSON lines off a terminal, job fields on every job line, never a secret."""

from __future__ import annotations

import io
import json
import logging
import sys

import pytest

from billingworker import runtime as rt
from billingworker.actors.base import job
from billingworker.domain.errors import ValidationError
from billingworker.ops.logs import JsonFormatter, RedactFilter, TextFormatter, configure_logging, redact_text

CARD = "4111 1111 1111 1111"


def record(msg: str, *args, exc_info=None, **extra) -> logging.LogRecord:
    rec = logging.LogRecord("billingworker.jobs", logging.WARNING, __file__, 1, msg, args, exc_info)
    rec.__dict__.update(extra)
    return rec


def test_the_json_formatter_masks_a_card_number_and_a_token():
    rec = record("charge %s failed, token=%s", CARD, "tok_live_abc123", actor="apply_payment", client_id=42,
                 gateway_token="tok_live_abc123", kwargs={"card": "4111-1111-1111-1111", "password": "hunter2"})

    line = JsonFormatter().format(rec)

    data = json.loads(line)
    assert data["message"] == "charge ****1111 failed, token=***"
    assert data["gateway_token"] == "***"
    assert data["kwargs"] == {"card": "****1111", "password": "***"}
    assert (data["level"], data["logger"], data["actor"], data["client_id"]) == ("WARNING", "billingworker.jobs",
                                                                               "apply_payment", 42)
    assert data["time"].endswith("+00:00")
    assert "4111" not in line.replace("****1111", "") and "tok_live" not in line and "hunter2" not in line


def test_exceptions_are_masked_too():
    try:
        raise RuntimeError(f"gateway refused card {CARD} (secret: s3cr3t)")
    except RuntimeError:
        rec = record("capture failed", exc_info=sys.exc_info())

    data = json.loads(JsonFormatter().format(rec))

    assert "RuntimeError: gateway refused card ****1111 (secret: ***)" in data["exception"]
    assert CARD not in TextFormatter().format(rec)


def test_the_filter_masks_the_record_itself_for_every_handler_after_it():
    rec = record("login with password=%s for smtp://billing:pa55@smtp.example.com:587", "hunter2",
                 api_secret="xyz")

    RedactFilter().filter(rec)

    assert rec.getMessage() == "login with password=*** for smtp://billing:***@smtp.example.com:587"
    assert rec.api_secret == "***"


@pytest.mark.parametrize("text", ["invoice 1234 of client 42, total 10.50", "2026-01-10T09:00:00+00:00",
                                  "message 3f1c2d9e-7b1a-4c55-9a43-0d1e8f6a2b10", "20 digits 12345678901234567890"])
def test_ordinary_text_is_left_alone(text):
    assert redact_text(text) == text


def test_configure_logging_writes_json_off_a_terminal_and_text_when_asked(monkeypatch):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        stream = io.StringIO()
        configure_logging(stream=stream)
        logging.getLogger("billingworker.test").info("paid with %s", CARD, extra={"client_id": 7})
        data = json.loads(stream.getvalue())
        assert (data["message"], data["client_id"]) == ("paid with ****1111", 7)

        monkeypatch.setenv("LOG_FORMAT", "text")
        text = io.StringIO()
        configure_logging(stream=text)
        logging.getLogger("billingworker.test").warning("token=abc")
        assert text.getvalue().rstrip().endswith("WARNING billingworker.test token=***")
        assert stream.getvalue().count("\n") == 1  # the first handler was replaced, not kept
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


@job()
def ops_logging_probe(client_id: int, fail: str = "") -> dict:
    if fail == "refuse":
        raise ValidationError("client_id", client_id, "is a test refusal")
    if fail == "crash":
        raise ConnectionError("database restarting")
    return {"client_id": client_id}


def job_records(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "billingworker.jobs" and getattr(r, "actor", "") ==
            "ops_logging_probe"]


def test_every_job_logs_actor_message_client_outcome_and_duration(caplog, engine):
    rt.configure(engine=engine)
    try:
        with caplog.at_level(logging.INFO, logger="billingworker.jobs"):
            ops_logging_probe.fn(client_id=12)
            with pytest.raises(ConnectionError):
                ops_logging_probe.fn(client_id="13", fail="crash")
            with pytest.raises(ValidationError):
                ops_logging_probe.fn(client_id=14, fail="refuse")
    finally:
        rt.reset()

    ok, error, refused = job_records(caplog)
    assert [(r.outcome, r.client_id, r.levelname) for r in (ok, error, refused)] == [
        ("ok", 12, "INFO"), ("error", 13, "WARNING"), ("refused", 14, "WARNING")]
    assert error.error == "ConnectionError"
    for r in (ok, error, refused):
        assert r.actor == "ops_logging_probe" and r.message_id == ""  # outside a worker: no message
        assert isinstance(r.duration_ms, float) and r.duration_ms >= 0
