"""The bulk write paths (COPY on PostgreSQL, hand-built multi-row statements on MySQL/MariaDB,
executemany on SQLite) write exactly the values given, whatever their characters."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select, text

from billingworker.domain.models import Client, CreditHistory, DailyRun, EmailTemplate
from billingworker.store import bulk
from billingworker.store.bulk import insert_rows, insert_rows_returning_ids, reserve_ids, update_rows
from billingworker.store.conflicts import insert_ignoring_conflicts_ids_by
from billingworker.store.dialect import dialect_name, returns_from_insert
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
    if dialect_name(session) == "mysql":
        # no sequences there: ids come from AUTO_INCREMENT, read back after the insert
        with pytest.raises(NotImplementedError, match="insert_rows_returning_ids"):
            reserve_ids(session, CreditHistory.__table__, 3)
        return
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


def _history_rows(client_id: int, descriptions) -> list[dict]:
    return [{"client_id": client_id, "date": date(2026, 1, 1), "description": text, "amount": Decimal("1"),
             "balance_after": Decimal("1"), "source": "bulk", "invoice_id": None} for text in descriptions]


def _descriptions_by_id(session, ids) -> list[str]:
    by_id = dict(session.execute(select(CreditHistory.id, CreditHistory.description)
                                 .where(CreditHistory.id.in_(ids))).all())
    return [by_id[i] for i in ids]


@pytest.mark.parametrize("consecutive", [True, False], ids=["multi-row", "row-by-row"])
@pytest.mark.parametrize("step", [1, 3])
def test_ids_read_back_without_returning_belong_to_their_rows(session, monkeypatch, caplog, consecutive, step):
    # Given MySQL 8's forms (no INSERT ... RETURNING), under either innodb_autoinc_lock_mode the
    # store can meet, and an auto_increment_increment of 1 or of 3 (as a multi-master setup has)
    if returns_from_insert(session) or dialect_name(session) != "mysql":
        pytest.skip("the MySQL 8 form: runs on TEST_DATABASES=mysql8-forms")
    monkeypatch.setattr(bulk, "autoinc_ids_are_consecutive", lambda _mode: consecutive)
    bulk._warn_row_by_row.cache_clear()
    c = f.client(session)
    insert_rows_returning_ids(session, CreditHistory.__table__, _history_rows(c.id, ["before"]))
    session.execute(text(f"SET SESSION auto_increment_increment = {step}"))
    try:
        # When more rows than one statement takes are inserted, ids read back
        names = [f"row {n}" for n in range(bulk.MYSQL_ROWS_PER_STATEMENT + 5)]
        ids = insert_rows_returning_ids(session, CreditHistory.__table__, _history_rows(c.id, names))
        session.commit()
    finally:
        session.execute(text("SET SESSION auto_increment_increment = 1"))
    # Then each id is the row given at its place, and none is taken twice
    assert _descriptions_by_id(session, ids) == names
    assert len(set(ids)) == len(ids)
    if consecutive:
        assert {b - a for a, b in zip(ids, ids[1:], strict=False)} == {step}
    # and the operator is told once, the first time, why inserts go one row at a time
    warnings = [r.getMessage() for r in caplog.records if "innodb_autoinc_lock_mode" in r.getMessage()]
    assert len(warnings) == (0 if consecutive else 1)


def test_insert_ignoring_conflicts_answers_the_ids_of_the_rows_it_inserted(session):
    # Given a template named "taken" already there
    created = datetime(2026, 1, 1, 9, 0)
    session.add(EmailTemplate(name="taken", subject="s", body="b", created_at=created))
    session.commit()
    # When three rows are inserted skipping clashes, one of them clashing
    rows = [{"name": name, "subject": "s", "body": "b", "created_at": created} for name in ["first", "taken", "third"]]
    ids = insert_ignoring_conflicts_ids_by(session, EmailTemplate, rows, "name", rows_per_statement=2)
    session.commit()
    # Then the two new rows are answered with their own ids and the clashing one is left out
    assert set(ids) == {"first", "third"}
    stored = dict(session.execute(select(EmailTemplate.name, EmailTemplate.id)).all())
    assert ids == {"first": stored["first"], "third": stored["third"]}
    assert len(stored) == 3


def test_bulk_writes_name_columns_that_are_reserved_words(session):
    # Given rows of a table with a column named after a reserved word (``trigger``: MySQL and
    # MariaDB reserve it; MySQL 8 reserves more, e.g. ``key``, ``role``, ``last_value``)
    rows = [{"run_date": date(2026, 1, n), "dry_run": True, "status": "running", "trigger": f"cli {n}",
             "started_at": datetime(2026, 1, n, 6, 0), "summary": "{}"} for n in (1, 2)]
    # When they are inserted and updated in bulk
    ids = insert_rows_returning_ids(session, DailyRun.__table__, rows)
    update_rows(session, DailyRun.__table__, [{"id": i, "trigger": f"scheduler {i}"} for i in ids])
    session.commit()
    # Then the reserved-word column holds what was written
    got = dict(session.execute(select(DailyRun.id, DailyRun.trigger).where(DailyRun.id.in_(ids))).all())
    assert got == {i: f"scheduler {i}" for i in ids}
