"""Removing a stored pay method (SPEC §12, issue 12), on SQLite and PostgreSQL: at the gateway
first, our record only when it agrees; the default moves on; twice is once."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billingworker.adapters.gateway import TEST_GATEWAY, gateway_for
from billingworker.domain.models import Invoice, JobReceipt, PaymentCapture, PayMethod
from billingworker.domain.payments.pay_method_removal import (
    GatewayCallFailed,
    record_removal_error,
    remove_pay_method,
)
from tests import factories as f
from tests.factories import race

NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


def remove(session: Session, pay_method_id: int, **kw):
    return remove_pay_method(session, pay_method_id, gateway_for=gateway_for, now=NOW, **kw)


def default_of(session: Session, client_id: int) -> int | None:
    session.expire_all()
    return session.scalar(select(PayMethod.id).where(PayMethod.client_id == client_id, PayMethod.is_default))


def local_card(session: Session, client, **kw) -> PayMethod:
    kw.setdefault("is_default", False)
    return f.card(session, client, type="CreditCard", gateway_name="", gateway_token="",
                  encrypted_data=b"encrypted 4111", **kw)


def test_a_card_at_the_gateway_goes_there_first_and_the_default_moves_to_the_next_by_id(session):
    # Given a client with a default card at the gateway, then a bank account and a local card
    c = f.client(session)
    first = f.card(session, c)
    bank = f.card(session, c, type="BankAccount", gateway_name="", gateway_token="", is_default=False,
                  bank_name="First Bank")
    local_card(session, c)
    session.commit()

    # When the default card is removed
    result = remove(session, first.id)
    session.commit()

    # Then the gateway deleted it, our record is gone, and the next method in the profile's
    # order (by id) is the default
    assert (result.outcome, result.remote, result.was_default, result.new_default_id) == (
        "removed", "deleted", True, bank.id)
    assert TEST_GATEWAY.deletions == [f"remove-pay-method-{first.id}"]
    assert session.get(PayMethod, first.id) is None
    assert default_of(session, c.id) == bank.id


def test_a_local_card_is_erased_without_any_remote_call_and_the_last_one_leaves_no_default(session):
    # Given a client whose only (and default) pay method is a local card
    c = f.client(session)
    card = local_card(session, c, is_default=True)
    session.commit()

    # When it is removed
    result = remove(session, card.id)
    session.commit()

    # Then it is erased without asking any gateway, and no default is left
    assert (result.outcome, result.remote, result.new_default_id) == ("removed", "not_needed", None)
    assert TEST_GATEWAY.deletion_calls == 0
    assert default_of(session, c.id) is None


def test_removing_a_method_that_is_not_the_default_leaves_the_default(session):
    # Given a default card and another one
    c = f.client(session)
    default = f.card(session, c)
    other = f.card(session, c, gateway_token="tok_other_1111", is_default=False)
    session.commit()

    # When the other one is removed
    result = remove(session, other.id)
    session.commit()

    # Then the default stays the default
    assert result.outcome == "removed" and not result.was_default
    assert default_of(session, c.id) == default.id


def test_a_refusal_keeps_the_record_and_says_why(session):
    # Given a card whose gateway refuses to delete it (in use by a subscription)
    c = f.client(session)
    card = f.card(session, c, gateway_token="tok_refuse_4242")
    session.commit()

    # When it is removed
    result = remove(session, card.id)
    session.commit()

    # Then our record stays, still the default, with the gateway's words and the time
    assert (result.outcome, result.remote) == ("kept", "refused")
    session.expire_all()
    kept = session.get(PayMethod, card.id)
    assert "in use by an active subscription" in kept.removal_error
    assert kept.removal_attempted_at is not None and kept.is_default
    assert session.scalar(select(func.count()).select_from(JobReceipt)) == 0


@pytest.mark.parametrize("gateway_name", ["stripe", "testgateway"])
def test_a_gateway_no_longer_active_keeps_the_record(session, monkeypatch, gateway_name):
    # Given a card at a gateway nobody registered, or at the test gateway while it is switched off
    monkeypatch.setenv("PAYMENT_GATEWAYS", "")
    c = f.client(session)
    card = f.card(session, c, gateway_name=gateway_name)
    session.commit()

    result = remove(session, card.id)
    session.commit()

    # Then nothing is asked anywhere, the record stays and names the gateway
    assert (result.outcome, result.remote) == ("kept", "not_active")
    assert TEST_GATEWAY.deletion_calls == 0
    session.expire_all()
    assert f"gateway {gateway_name!r} is not active" in session.get(PayMethod, card.id).removal_error


def test_force_deletes_our_record_without_calling_the_gateway(session):
    # Given a card its gateway would refuse to delete
    c = f.client(session)
    card = f.card(session, c, gateway_token="tok_refuse_4242")
    session.commit()

    # When its removal is forced
    result = remove(session, card.id, force=True)
    session.commit()

    # Then our record is gone, the gateway was not called, and the result says so
    assert (result.outcome, result.remote) == ("removed", "not_run")
    assert "without asking" in result.message
    assert TEST_GATEWAY.deletion_calls == 0
    assert session.get(PayMethod, card.id) is None


def test_a_gateway_that_raises_changes_nothing_and_the_error_is_written_apart(session):
    # Given a card whose gateway is unreachable
    c = f.client(session)
    card = f.card(session, c, gateway_token="tok_unavailable_4242")
    session.commit()

    # When it is removed: the call raises (transient) and the transaction rolls back
    with pytest.raises(GatewayCallFailed) as raised:
        remove(session, card.id)
    session.rollback()

    # Then the record is intact; the caller writes the message in its own transaction
    assert session.get(PayMethod, card.id) is not None
    assert "temporarily unavailable" in raised.value.message
    assert record_removal_error(session, card.id, raised.value.message, now=NOW)
    session.commit()
    session.expire_all()
    assert "temporarily unavailable" in session.get(PayMethod, card.id).removal_error


def test_asking_the_gateway_twice_for_one_token_is_harmless(session):
    # Given a card whose deletion is made but whose answer is lost (a timeout)
    c = f.client(session)
    card = f.card(session, c, gateway_token="tok_timeout_4242")
    session.commit()
    with pytest.raises(GatewayCallFailed):
        remove(session, card.id)
    session.rollback()

    # When the removal is retried
    result = remove(session, card.id)
    session.commit()

    # Then the gateway, which no longer knows the token, agrees, and our record goes
    assert (result.outcome, result.remote, result.message) == ("removed", "deleted", "testgateway: already deleted")
    assert TEST_GATEWAY.deletion_calls == 2 and len(TEST_GATEWAY.deletions) == 1


def test_a_second_run_reports_already_removed_and_asks_nobody(session):
    # Given a card (with a capture in its history) that was removed
    c = f.client(session)
    card = f.card(session, c)
    invoice = Invoice(client_id=c.id, currency_id=c.currency_id, status="Paid", date_created=NOW.date(),
                      date_due=NOW.date())
    session.add(invoice)
    session.flush()
    capture = PaymentCapture(invoice_id=invoice.id, client_id=c.id,
                             pay_method_id=card.id, attempt_on=NOW.date(), gateway="testgateway", amount=1,
                             status="succeeded")
    session.add(capture)
    session.commit()
    remove(session, card.id)
    session.commit()

    # When the removal runs again (a redelivery, another message)
    again = remove(session, card.id)
    session.commit()

    # Then it reports the first removal without asking the gateway; an unknown id is not found
    assert (again.outcome, again.client_id, again.remote) == ("already_removed", c.id, "deleted")
    assert TEST_GATEWAY.deletion_calls == 1
    assert remove(session, 987654).outcome == "not_found"
    session.expire_all()
    assert session.get(PaymentCapture, capture.id).pay_method_id is None, "the capture history stays"


def test_two_concurrent_removals_on_postgresql_remove_once_and_ask_the_gateway_once(pg_engine, pg_session):
    # Given a client with two cards, the first the default
    c = f.client(pg_session)
    first = f.card(pg_session, c)
    second = f.card(pg_session, c, gateway_token="tok_second_1111", is_default=False)
    pg_session.commit()

    # When three workers remove the default at the same moment
    outcomes = race(pg_engine, *[lambda s: remove(s, first.id).outcome] * 3)

    # Then one removed it, the others found it gone; one gateway call; one default
    assert sorted(outcomes) == ["already_removed", "already_removed", "removed"]
    assert TEST_GATEWAY.deletion_calls == 1
    assert default_of(pg_session, c.id) == second.id
