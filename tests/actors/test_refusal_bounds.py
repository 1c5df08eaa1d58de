"""A refused value is quoted cut and masked, in ``job_failures.reason`` and in the log line,
whatever its size and wherever a secret sits in it.

A message over 1 MB is refused whole by the message guard; the job itself is called directly
with 10 MB values (a script or a test may), and through the broker with values under 1 MB.
"""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select

from billingworker.actors.profiles import adjust_credit
from billingworker.domain.errors import ValidationError
from billingworker.domain.failures import MAX_REASON_LENGTH
from billingworker.domain.models import JobFailure
from billingworker.domain.redaction import MAX_SHOWN
from tests import factories as f

from .conftest import dead_letters, drain

CARD = "4111 1111 1111 1111"
TEN_MB = 10 * 1024 * 1024


def refusal(session) -> JobFailure:
    session.rollback()
    return session.scalars(select(JobFailure)).one()


def refused_line(caplog) -> str:
    [line] = [r.getMessage() for r in caplog.records if getattr(r, "outcome", "") == "refused"]
    return line


@pytest.fixture
def client_id(session) -> int:
    c = f.client(session)
    session.commit()
    return c.id


def refuse(caplog, **kwargs) -> None:
    """Run adjust_credit as the worker would (refusal recorded and logged), outside a message."""
    with caplog.at_level(logging.WARNING, logger="billingworker.jobs"), pytest.raises(ValidationError):
        adjust_credit.fn(request_id="refused-1", **kwargs)


def test_a_10_mb_amount_is_quoted_in_200_characters_with_its_length(session, worker, client_id, caplog):
    refuse(caplog, client_id=client_id, amount="x" * TEN_MB, description="Goodwill")

    row = refusal(session)
    assert row.field == "amount" and f"... ({TEN_MB} characters)" in row.reason
    assert len(row.reason) <= MAX_SHOWN + 100
    line = refused_line(caplog)
    assert len(line) <= MAX_SHOWN + 200 and f"({TEN_MB} characters)" in line


def test_a_10_mb_description_is_refused_with_its_card_number_and_token_masked(session, worker, client_id, caplog):
    refuse(caplog, client_id=client_id, amount="5.00", description=f"token=tok_1; paid {CARD} " + "x" * TEN_MB)

    row = refusal(session)
    assert row.field == "description" and len(row.reason) <= MAX_REASON_LENGTH
    assert "****1111" in row.reason and "4111 1111" not in row.reason and "tok_1" not in row.reason
    line = refused_line(caplog)
    assert "4111 1111" not in line and "tok_1" not in line


def test_a_10_mb_argument_name_gives_a_bounded_reason(session, worker, client_id, caplog):
    refuse(caplog, client_id=client_id, amount="5.00", description="Goodwill", **{"k" * TEN_MB: 1})

    row = refusal(session)
    assert row.field == "arguments" and "do not fit adjust_credit" in row.reason
    assert len(row.reason) <= MAX_REASON_LENGTH and len(refused_line(caplog)) <= MAX_REASON_LENGTH + 100


def test_secrets_nested_in_a_refused_value_are_masked(session, worker, client_id, caplog):
    amount = {"card": {"number": CARD}, "account": {"login": {"password": "hunter2"}}, "note": f"by {CARD}"}
    refuse(caplog, client_id=client_id, amount=amount, description="Goodwill")

    row = refusal(session)
    assert row.field == "amount"
    assert "'card': '***'" in row.reason and "'password': '***'" in row.reason and "by ****1111" in row.reason
    assert "hunter2" not in row.reason and "4111 1111" not in row.reason
    line = refused_line(caplog)
    assert "hunter2" not in line and "4111 1111" not in line


def test_a_big_value_sent_through_the_broker_is_dead_lettered_with_a_bounded_masked_reason(session, worker,
                                                                                          client_id):
    # Given a message just under the guard's 1 MB: a description of 1,000,000 characters
    description = f"paid {CARD} password=hunter2 " + "x" * 1_000_000

    adjust_credit.send(client_id=client_id, amount="5.00", description=description)
    drain()

    row = refusal(session)
    assert (row.actor, row.field) == ("adjust_credit", "description") and len(row.reason) <= MAX_REASON_LENGTH
    assert "4111 1111" not in row.reason and "hunter2" not in row.reason
    assert len(dead_letters()) == 1
