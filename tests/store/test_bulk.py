"""The bulk write paths (COPY on PostgreSQL, hand-built multi-row statements on MySQL/MariaDB,
executemany on SQLite) write exactly the values given, whatever their characters."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import select

from billingworker.domain.models import Client, CreditHistory
from billingworker.store.bulk import insert_rows, insert_rows_returning_ids, reserve_ids, update_rows
from tests import factories as f

AWKWARD = ["O'Brien \"quoted\"", "back\\slash", "new\nline\ttab", "percent %s %(x)s", "🦄 ünïcödé 王", ""]


def test_rows_written_in_bulk_read_back_exactly(session):
    # Given a client, and history rows full of quotes, backslashes, placeholders and emoji
    c = f.client(session)
    rows = [{"client_id": c.id, "date": date(2026, 1, n + 1), "description": text,
             "amount": Decimal(f"{n}.0100"), "balance_after": Decimal("-0.5000") if n % 2 else Decimal("12.3400"),
             "source": "bulk", "invoice_id": None} for n, text in enumerate(AWKWARD)]
    # When they are inserted in bulk, ids returned
    ids = insert_rows_returning_ids(session, CreditHistory.__table__, rows)
    session.commit()
    # Then each row reads back as written, in order
    got = session.execute(select(CreditHistory.id, CreditHistory.description, CreditHistory.amount,
                                 CreditHistory.balance_after, CreditHistory.date, CreditHistory.invoice_id)
                          .where(CreditHistory.id.in_(ids))).all()
    by_id = {r.id: r for r in got}
    assert [by_id[i].description for i in ids] == AWKWARD
    assert [Decimal(by_id[i].amount) for i in ids] == [r["amount"] for r in rows]
    assert [Decimal(by_id[i].balance_after) for i in ids] == [r["balance_after"] for r in rows]
    assert [by_id[i].date for i in ids] == [r["date"] for r in rows]
    assert all(by_id[i].invoice_id is None for i in ids)


def test_update_rows_sets_each_row_its_own_values(session):
    clients = [f.client(session) for _ in range(3)]
    session.commit()
    update_rows(session, Client.__table__, [
        {"id": c.id, "notes": note, "tax_exempt": n == 1, "parked_at": datetime(2026, 1, 10, 9, 30, n)}
        for n, (c, note) in enumerate(zip(clients, AWKWARD, strict=False))])
    session.commit()
    session.expire_all()
    assert [session.get(Client, c.id).notes for c in clients] == AWKWARD[:3]
    assert [session.get(Client, c.id).tax_exempt for c in clients] == [False, True, False]
    assert [session.get(Client, c.id).parked_at.replace(tzinfo=None) for c in clients] == [
        datetime(2026, 1, 10, 9, 30, n) for n in range(3)]


def test_reserved_ids_are_new_and_never_handed_out_twice(session):
    c = f.client(session)

    def history(ids):
        insert_rows(session, CreditHistory.__table__, [
            {"id": i, "client_id": c.id, "date": date(2026, 1, 1), "description": "x", "amount": Decimal("1"),
             "balance_after": Decimal("1"), "source": "bulk", "invoice_id": None} for i in ids])

    # Given a row that took its id from the database
    insert_rows(session, CreditHistory.__table__, [
        {"client_id": c.id, "date": date(2026, 1, 1), "description": "x", "amount": Decimal("1"),
         "balance_after": Decimal("1"), "source": "bulk", "invoice_id": None}])
    session.commit()
    top = session.scalar(select(CreditHistory.id).order_by(CreditHistory.id.desc()).limit(1))
    # When ids are reserved and used, twice
    first = reserve_ids(session, CreditHistory.__table__, 3)
    history(first)
    second = reserve_ids(session, CreditHistory.__table__, 2)
    history(second)
    session.commit()
    # Then all are new, and a row the database numbers itself afterwards gets yet another id
    assert len(set(first + second)) == 5 and min(first + second) > top
    insert_rows(session, CreditHistory.__table__, [
        {"client_id": c.id, "date": date(2026, 1, 2), "description": "y", "amount": Decimal("1"),
         "balance_after": Decimal("1"), "source": "bulk", "invoice_id": None}])
    session.commit()
    assert session.scalar(select(CreditHistory.id).where(CreditHistory.description == "y")) > max(first + second)
