"""Row locks lock the rows they name: locking a client for billing leaves its currency and its
group free (MariaDB has no FOR UPDATE OF: store.locks.locks_only_the_named_table)."""

from __future__ import annotations

from sqlalchemy import text, update

from billingworker.db import session_factory
from billingworker.domain.billing.invoice_store import lock_clients
from billingworker.domain.models import Client, Currency
from tests import factories as f


def _short_lock_wait(session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SET LOCAL lock_timeout = '2s'"))
    else:
        session.execute(text("SET SESSION innodb_lock_wait_timeout = 2"))


def _restore_lock_wait(session) -> None:
    """A MySQL session variable outlives the transaction on the pooled connection: put it back,
    or the next test's lock waits give up after a second."""
    if session.get_bind().dialect.name != "postgresql":
        session.execute(text("SET SESSION innodb_lock_wait_timeout = DEFAULT"))
        session.rollback()


def test_locking_clients_locks_neither_their_currency_nor_another_client(server_engine, server_session):
    # Given two clients of one currency, the first one locked for billing
    a, b = f.client(server_session), f.client(server_session)
    server_session.commit()
    holder = session_factory(server_engine)()
    other = session_factory(server_engine)()
    try:
        info = lock_clients(holder, [a.id])
        assert list(info) == [a.id] and info[a.id].minor_units == 2
        # When another transaction changes the currency and locks the second client
        _short_lock_wait(other)
        other.execute(update(Currency).where(Currency.id == a.currency_id).values(rate=2))
        assert list(lock_clients(other, [b.id])) == [b.id]
        other.commit()
    finally:
        other.rollback()
        _restore_lock_wait(other)
        other.close()
        holder.rollback()
        holder.close()
    # Then neither waited on the first client's lock (a lock wait timeout would have raised)
    server_session.expire_all()
    assert server_session.get(Currency, a.currency_id).rate == 2
    assert server_session.get(Client, b.id).id == b.id
