"""``is_transient``: a deadlock or a lock wait timeout means "run the transaction again", never a
failed client; a clash on a unique key is not transient. Provoked for real on each server."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest
from sqlalchemy import update
from sqlalchemy.exc import DBAPIError, IntegrityError

from billingworker.db import session_factory
from billingworker.domain.models import Client, User
from billingworker.store.conflicts import is_transient, unstorable_value
from tests import factories as f

from .conftest import restore_lock_wait, short_lock_wait


def test_a_lock_wait_timeout_is_transient(server_engine, server_session):
    # Given one transaction holding a client's row lock
    c = f.client(server_session)
    server_session.commit()
    server_session.execute(update(Client).where(Client.id == c.id).values(notes="first"))
    other = session_factory(server_engine)()
    try:
        # When another waits for it longer than it may
        short_lock_wait(other, 1)
        with pytest.raises(DBAPIError) as waited:
            other.execute(update(Client).where(Client.id == c.id).values(notes="second"))
        # Then the error is transient
        assert is_transient(waited.value)
    finally:
        other.rollback()
        restore_lock_wait(other)
        other.close()


@pytest.mark.parametrize("in_savepoint", [False, True])
def test_a_deadlock_is_transient(server_engine, server_session, in_savepoint):
    """In a savepoint too: InnoDB rolls the whole transaction back, and leaving the savepoint
    then fails with "SAVEPOINT does not exist", raised while handling the deadlock."""
    # Given two clients, and two transactions locking them in opposite orders
    a, b = f.client(server_session), f.client(server_session)
    server_session.commit()
    barrier = threading.Barrier(2)
    errors: list[Exception] = []

    def lock(first: int, second: int) -> None:
        session = session_factory(server_engine)()
        try:
            session.execute(update(Client).where(Client.id == first).values(notes="x"))
            barrier.wait()
            if in_savepoint:
                with session.begin_nested():
                    session.execute(update(Client).where(Client.id == second).values(notes="y"))
            else:
                session.execute(update(Client).where(Client.id == second).values(notes="y"))
            session.commit()
        except DBAPIError as exc:
            errors.append(exc)
        finally:
            session.rollback()
            session.close()

    threads = [threading.Thread(target=lock, args=pair) for pair in ((a.id, b.id), (b.id, a.id))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then the server picked a victim, and its error is transient (on a loaded machine the other
    # may also run out of its lock wait while the victim is rolled back: transient too)
    assert 1 <= len(errors) <= 2, errors
    assert all(is_transient(e) for e in errors), errors


def test_a_unique_clash_is_not_transient(session):
    session.add(User(email="ada@example.com"))
    session.commit()
    session.add(User(email="ada@example.com"))
    with pytest.raises(IntegrityError) as clash:
        session.flush()
    assert not is_transient(clash.value)
    assert not is_transient(ValueError("not a database error"))


def test_a_value_no_column_holds_is_unstorable_not_transient(server_engine, server_session):
    # Given a client, when its credit balance is set beyond NUMERIC(18,4)
    c = f.client(server_session)
    server_session.commit()
    with pytest.raises(DBAPIError) as refused:
        server_session.execute(update(Client).where(Client.id == c.id)
                               .values(credit_balance=Decimal("100000000000000.00")))
    server_session.rollback()
    # Then the database's reason is given, and it is not taken for a passing trouble
    assert not is_transient(refused.value)
    reason = unstorable_value(refused.value)
    assert reason and ("overflow" in reason or "Out of range" in reason), reason


def test_a_unique_clash_is_not_unstorable(server_session):
    server_session.add(User(email="dup@example.com"))
    server_session.commit()
    server_session.add(User(email="dup@example.com"))
    with pytest.raises(IntegrityError) as clash:
        server_session.flush()
    server_session.rollback()
    assert unstorable_value(clash.value) is None
