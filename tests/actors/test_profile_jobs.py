"""Profile jobs through a real worker: normalize_phone_numbers (fan-out, bad numbers reported
per record) and adjust_credit (with history, never below zero, once per message or request);
on PostgreSQL, two workers at the same moment."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from dramatiq import Message
from sqlalchemy import func, select

from billingworker import runtime as rt
from billingworker.actors import broker
from billingworker.actors.profiles import adjust_credit, normalize_phone_numbers, normalize_phone_numbers_batch
from billingworker.clock import FixedClock
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import Client, Contact, CreditHistory, JobFailure, JobReceipt
from billingworker.domain.settings import save_settings
from tests import factories as f

from .conftest import dead_letters, drain

D = Decimal


def count(session, model, *where) -> int:
    session.rollback()
    return session.scalar(select(func.count()).select_from(model).where(*where))


def phone(session, model, row_id) -> str:
    session.rollback()
    return session.execute(select(model.phone_number).where(model.id == row_id)).scalar_one()


def balance(session, client_id) -> Decimal:
    session.rollback()
    return session.execute(select(Client.credit_balance).where(Client.id == client_id)).scalar_one()


# --- normalize_phone_numbers --------------------------------------------------------------------

def test_every_client_is_converted_in_batches_and_a_bad_number_stops_nobody(session, worker):
    typed = [("GB", "020 7123 4567"), ("US", "(202) 555-0143"), ("DE", "nonsense"), ("AU", "02 9876 5432"),
             ("NL", "+31 20 123 4567")]
    clients = [f.client(session, country=country, phone_number=number) for country, number in typed]
    session.add(Contact(client_id=clients[0].id, email="bob@example.com", phone_number="1", country="GB"))
    session.commit()
    normalize_phone_numbers.send()
    drain()
    assert [phone(session, Client, c.id) for c in clients] == [
        "+44.2071234567", "+1.2025550143", "nonsense", "+61.298765432", "+31.201234567"]
    failures = session.execute(select(JobFailure).order_by(JobFailure.client_id)).scalars().all()
    assert [(x.client_id, x.field, x.actor) for x in failures] == [
        (clients[0].id, f"contacts[{session.scalar(select(Contact.id))}].phone_number", "normalize_phone_numbers"),
        (clients[2].id, "phone_number", "normalize_phone_numbers")]
    assert "letters" in failures[1].reason and "nonsense" in failures[1].reason
    assert dead_letters() == []


def test_one_client_and_twice_changes_nothing_more(session, worker):
    c = f.client(session, country="FR", phone_number="01 23 45 67 89")
    other = f.client(session, country="GB", phone_number="020 7123 4567")
    session.commit()
    message = normalize_phone_numbers.send(client_id=c.id)
    drain()
    broker.enqueue(message)
    drain()
    assert phone(session, Client, c.id) == "+33.123456789"
    assert phone(session, Client, other.id) == "020 7123 4567", "only the client asked for"


def test_a_redelivered_batch_reports_its_bad_numbers_once(session, worker):
    c = f.client(session, country="US", phone_number="12")
    session.commit()
    message = normalize_phone_numbers_batch.send(client_ids=[c.id])
    drain()
    broker.enqueue(message)
    drain()
    assert count(session, JobFailure) == 1
    assert phone(session, Client, c.id) == "12"


def test_with_formatting_off_numbers_stay_as_typed(session, worker):
    c = f.client(session, country="GB", phone_number="020 7123 4567")
    save_settings(session, phone_number_formatting=False)
    session.commit()
    normalize_phone_numbers.send()
    normalize_phone_numbers.send(client_id=c.id)
    drain()
    assert phone(session, Client, c.id) == "020 7123 4567"
    assert count(session, JobFailure) == 0


@pytest.mark.parametrize("kwargs, field", [
    ({"client_id": 999_999}, "client_id"),
    ({"client_id": "x"}, "client_id"),
    ({"client_ids": []}, "client_ids"),
])
def test_bad_arguments_are_dead_lettered(session, worker, kwargs, field):
    actor = normalize_phone_numbers_batch if "client_ids" in kwargs else normalize_phone_numbers
    actor.send(**kwargs)
    drain()
    assert len(dead_letters()) == 1
    assert session.execute(select(JobFailure.field)).scalar_one() == field


# --- adjust_credit ------------------------------------------------------------------------------

def test_credit_is_added_and_removed_with_history(session, worker):
    c = f.client(session)
    session.commit()
    adjust_credit.send(client_id=c.id, amount="25.00", description="Goodwill")
    drain()
    adjust_credit.send(client_id=c.id, amount="-10.50", description="Correction")
    drain()
    assert balance(session, c.id) == D("14.50")
    history = session.execute(select(CreditHistory).order_by(CreditHistory.id)).scalars().all()
    assert [(h.amount, h.balance_after, h.description, h.source) for h in history] == [
        (D("25.00"), D("25.00"), "Goodwill", "job:adjust_credit"),
        (D("-10.50"), D("14.50"), "Correction", "job:adjust_credit")]
    assert history[0].date.isoformat() == "2026-01-10", "dated by the clock"


def test_removing_more_than_the_balance_is_refused_clearly_and_changes_nothing(session, worker):
    c = f.client(session, credit_balance=D("5.00"))
    session.commit()
    adjust_credit.send(client_id=c.id, amount="-5.01", description="Too much")
    drain()
    assert balance(session, c.id) == D("5.00")
    assert count(session, CreditHistory) == 0 and count(session, JobReceipt) == 0
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.field == "amount" and "below zero" in failure.reason
    assert "$5.01" in failure.reason and "$5.00" in failure.reason
    assert len(dead_letters()) == 1
    adjust_credit.send(client_id=c.id, amount="-5.00", description="All of it")
    drain()
    assert balance(session, c.id) == D("0")


def test_credit_beyond_what_the_books_hold_is_refused_at_once_and_changes_nothing(session, worker):
    # Each amount is within the limit; their sum is not (NUMERIC(18,4): it failed in the database
    # and was retried 10 times, with no failure row)
    c = f.client(session, credit_balance=D("99999999999000.00"))
    session.commit()
    adjust_credit.send(client_id=c.id, amount="99999999999999.99", description="Too much", request_id="big")
    drain()
    assert balance(session, c.id) == D("99999999999000.00") and count(session, CreditHistory) == 0
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.field == "amount" and "beyond the largest amount the books hold" in failure.reason
    [dead] = dead_letters()
    assert dead.options.get("retries", 0) == 0, "one attempt, no retry"


@pytest.mark.parametrize("kwargs, field", [
    ({"amount": "0"}, "amount"),
    ({"amount": "0.00"}, "amount"),
    ({"amount": 1.5}, "amount"),
    ({"amount": "1.234"}, "amount"),
    ({"amount": "ten"}, "amount"),
    ({"description": ""}, "description"),
    ({"description": "x" * 501}, "description"),
    ({"client_id": 999_999}, "client_id"),
    ({"request_id": ""}, "request_id"),
])
def test_bad_input_is_dead_lettered_with_the_field_named(session, worker, kwargs, field):
    c = f.client(session, credit_balance=D("5.00"))
    session.commit()
    adjust_credit.send(**{"client_id": c.id, "amount": "1.00", "description": "Test", **kwargs})
    drain()
    assert len(dead_letters()) == 1
    assert session.execute(select(JobFailure.field)).scalar_one() == field
    assert balance(session, c.id) == D("5.00")


def test_a_redelivered_message_changes_credit_once(session, worker):
    c = f.client(session)
    session.commit()
    message = adjust_credit.send(client_id=c.id, amount="7.00", description="Once")
    drain()
    broker.enqueue(message)
    drain()
    assert balance(session, c.id) == D("7.00") and count(session, CreditHistory) == 1


def test_a_repeated_request_id_changes_credit_once(session, worker):
    c = f.client(session)
    session.commit()
    for _ in range(2):
        adjust_credit.send(client_id=c.id, amount="7.00", description="Once", request_id="admin-42")
    drain()
    assert balance(session, c.id) == D("7.00") and count(session, CreditHistory) == 1
    adjust_credit.send(client_id=c.id, amount="7.00", description="Another", request_id="admin-43")
    drain()
    assert balance(session, c.id) == D("14.00")


def test_the_same_message_twice_at_once_changes_credit_once(session, worker):
    """Two worker threads take the two deliveries of one message together."""
    c = f.client(session)
    session.commit()
    message = Message(queue_name="billing", actor_name="adjust_credit", args=(),
                      kwargs={"client_id": c.id, "amount": "3.00", "description": "Twice at once"}, options={})
    broker.enqueue(message)
    broker.enqueue(message)
    drain()
    assert balance(session, c.id) == D("3.00") and count(session, CreditHistory) == 1


# --- PostgreSQL, two workers at the same moment -------------------------------------------------

@pytest.fixture
def pg_runtime(pg_engine):
    rt.configure(engine=pg_engine, clock=FixedClock(datetime(2026, 1, 10, 9, tzinfo=UTC)))
    yield pg_engine
    rt.reset()


def race(*calls) -> list:
    """Call each actor function in its own thread, all released together; (result, error) each."""
    barrier = threading.Barrier(len(calls))
    out: list = [None] * len(calls)

    def run(n, call):
        barrier.wait()
        try:
            out[n] = ("ok", call())
        except Exception as exc:  # noqa: BLE001 - returned to the test
            out[n] = ("error", exc)

    threads = [threading.Thread(target=run, args=(n, c)) for n, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_two_removals_racing_never_go_below_zero(pg_runtime, pg_session):
    c = f.client(pg_session, credit_balance=D("100.00"))
    pg_session.commit()
    remove = lambda rid: lambda: adjust_credit(client_id=c.id, amount="-70.00", description=rid,  # noqa: E731
                                               request_id=rid)
    outcomes = race(remove("a"), remove("b"), remove("c"))
    assert sorted(kind for kind, _ in outcomes) == ["error", "error", "ok"]
    for kind, value in outcomes:
        if kind == "error":
            assert isinstance(value, ValidationError) and value.field == "amount"
    assert balance(pg_session, c.id) == D("30.00")
    assert count(pg_session, CreditHistory) == 1


def test_two_additions_racing_both_count(pg_runtime, pg_session):
    c = f.client(pg_session)
    pg_session.commit()
    add = lambda rid: lambda: adjust_credit(client_id=c.id, amount="12.34", description=rid,  # noqa: E731
                                            request_id=rid)
    outcomes = race(add("a"), add("b"), add("c"), add("d"))
    assert [kind for kind, _ in outcomes] == ["ok"] * 4
    assert balance(pg_session, c.id) == D("49.36")
    assert sorted(pg_session.scalars(select(CreditHistory.balance_after))) == [
        D("12.34"), D("24.68"), D("37.02"), D("49.36")], "each saw the one before"


def test_the_same_request_at_once_changes_credit_once(pg_runtime, pg_session):
    c = f.client(pg_session)
    pg_session.commit()
    same = lambda: adjust_credit(client_id=c.id, amount="9.99", description="dup", request_id="r-1")  # noqa: E731
    outcomes = race(same, same, same)
    assert [kind for kind, _ in outcomes] == ["ok"] * 3
    assert balance(pg_session, c.id) == D("9.99")
    assert count(pg_session, CreditHistory) == 1 and count(pg_session, JobReceipt) == 1


def test_the_same_client_converted_by_two_workers_at_once_ends_the_same(pg_runtime, pg_session):
    c = f.client(pg_session, country="GB", phone_number="020 7123 4567")
    other = Contact(client_id=c.id, email="other@example.com", phone_number="01 23 45 67 89", country="FR")
    pg_session.add(other)
    pg_session.commit()
    convert = lambda: normalize_phone_numbers(client_id=c.id)  # noqa: E731
    outcomes = race(convert, convert, convert)
    assert [kind for kind, _ in outcomes] == ["ok"] * 3, outcomes
    assert phone(pg_session, Client, c.id) == "+44.2071234567"
    assert phone(pg_session, Contact, other.id) == "+33.123456789"
    assert count(pg_session, JobFailure) == 0, "a number converted by the other worker is no failure"
