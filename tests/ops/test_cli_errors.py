"""Operator commands fail with a clear error, never a traceback: ids beyond the database's
integer, a database whose schema is not migrated, a broker that does not answer; and a resend
whose delivery could not be enqueued says the relay will deliver it (exit 0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text

from billingworker.db import unit_of_work
from billingworker.domain.models import OutboxEmail

from .conftest import cli, db_url, kill, message

HUGE = "99999999999999999999"
#: Nothing listens there: a broker that does not answer.
DOWN = "redis://127.0.0.1:1/0"
BIN = Path(sys.executable).parent / "billingworker"


@pytest.mark.parametrize("args", [
    ("unpark", HUGE),
    ("failures", "--client", HUGE),
    ("failures", "--run", HUGE),
    ("outbox", "list", "--client", HUGE),
    ("outbox", "resend", HUGE),
    ("outbox", "resend", "--all-failed", "--client", HUGE),
    ("daily-run", "--resume", HUGE),
])
def test_an_id_beyond_the_integer_column_is_a_usage_error(engine, args):
    result = cli(engine, *args)

    assert result.exit_code == 2, result.output
    assert "is not in the range 1<=x<=2147483647" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("limit", ["0", "-1", "10001"])
@pytest.mark.parametrize("command", ["dead-letters", "retries"])
def test_a_list_limit_out_of_range_is_refused(redis_broker, pg_engine, command, limit):
    kill(redis_broker, message())

    result = cli(pg_engine, command, "list", "--limit", limit)

    assert result.exit_code == 2 and "--limit" in result.output and "1<=x<=10000" in result.output


@pytest.mark.parametrize("command", ["dead-letters", "retries"])
def test_list_json_says_why_on_stdout_when_the_broker_does_not_answer(pg_engine, command):
    result = cli(pg_engine, command, "list", "--json", broker_url=DOWN)

    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error.startswith("Redis at redis://127.0.0.1:1/0: ") and "Traceback" not in result.output


# --- a database whose tables do not exist --------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated_url(request, tmp_path, pg_engine) -> str:
    """A database that answers but holds no table (``db upgrade`` never ran)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.sqlite3'}"
    with pg_engine.begin() as conn:
        conn.execute(text("CREATE SCHEMA IF NOT EXISTS unmigrated"))
    return db_url(pg_engine) + "?options=-csearch_path%3Dunmigrated"


@pytest.mark.parametrize("args", [
    ("outbox", "list"),
    ("outbox", "resend", "1"),
    ("settings", "show"),
    ("settings", "set", "late_fee_days=3"),
    ("failures",),
    ("unpark", "1"),
    ("daily-run", "--dry-run"),
])
def test_an_unmigrated_database_asks_for_db_upgrade(unmigrated_url, args):
    result = cli(None, *args, database_url=unmigrated_url)

    assert result.exit_code == 1, result.output
    assert result.output.startswith("Error: database at ")
    assert "its tables are missing: run `billingworker db upgrade`" in result.output
    assert "Traceback" not in result.output


# --- a broker that does not answer (a process of its own: the jobs bind to BROKER_URL on import) --

def run(engine: Engine, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "BROKER_URL": DOWN, "DATABASE_URL": db_url(engine)}
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_outbox_relay_says_the_broker_did_not_answer(pg_engine):
    result = run(pg_engine, "outbox", "relay")

    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("Error: broker at redis://127.0.0.1:1/0 did not answer: ConnectionError")
    assert "Traceback" not in result.stderr


def failed_email(engine: Engine) -> int:
    with unit_of_work(engine) as session:
        row = OutboxEmail(client_id=None, template="client_signup", context="{}", status="failed", attempts=3,
                          last_error="SMTP down", created_at=datetime.now(UTC))
        session.add(row)
        session.commit()
        return row.id


def status_of(engine: Engine, email_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT status FROM email_outbox WHERE id = :i"), {"i": email_id}).scalar_one()


def test_outbox_resend_with_the_broker_down_is_done_and_left_to_the_relay(engine):
    # Given a failed email, and a broker that does not answer
    email = failed_email(engine)

    # When it is resent
    result = run(engine, "outbox", "resend", str(email))

    # Then the resend is done (queued: the relay delivers it), with a warning saying so, exit 0
    assert result.returncode == 0, result.stderr
    assert status_of(engine, email) == "queued"
    assert "Warning: queued 1; the broker did not answer (ConnectionError: " in result.stderr
    assert "the scheduler's relay delivers them within about two minutes once the broker answers" in result.stderr
    assert "Traceback" not in result.stderr
    assert f"resent 1 email(s): {email}" in result.stdout
    # and a second resend finds it queued, not failed
    again = run(engine, "outbox", "resend", str(email))
    assert "not resent (it is queued)" in again.stderr


def test_the_resend_the_console_calls_reports_the_relay_instead_of_raising(pg_engine):
    from dramatiq import Message
    from dramatiq.brokers.redis import RedisBroker

    from billingworker.ops.outbox import resend

    email = failed_email(pg_engine)
    down = RedisBroker(url=DOWN)
    down.declare_queue("emails")
    try:
        done = resend(pg_engine, now=datetime.now(UTC), email_ids=[email], send=lambda ids: down.enqueue(
            Message(queue_name="emails", actor_name="deliver_email", args=(), kwargs={"email_id": ids[0]},
                    options={})))
    finally:
        down.close()

    assert done.queued == (email,) and done.left == {}
    assert done.warning is not None and done.warning.startswith("queued 1; the broker did not answer (ConnectionError")
    assert status_of(pg_engine, email) == "queued"
