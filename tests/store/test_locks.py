"""Row locks lock the rows they name: locking a client for billing leaves its currency and its
group free (MariaDB has no FOR UPDATE OF: store.locks.locks_only_the_named_table)."""

from __future__ import annotations

from sqlalchemy import update

from billingworker.db import session_factory
from billingworker.domain.billing.invoice_store import lock_clients
from billingworker.domain.models import Client, Currency
from tests import factories as f

from .conftest import restore_lock_wait, short_lock_wait


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
        short_lock_wait(other, 2)
        other.execute(update(Currency).where(Currency.id == a.currency_id).values(rate=2))
        assert list(lock_clients(other, [b.id])) == [b.id]
        other.commit()
    finally:
        other.rollback()
        restore_lock_wait(other)
        other.close()
        holder.rollback()
        holder.close()
    # Then neither waited on the first client's lock (a lock wait timeout would have raised)
    server_session.expire_all()
    assert server_session.get(Currency, a.currency_id).rate == 2
    assert server_session.get(Client, b.id).id == b.id
