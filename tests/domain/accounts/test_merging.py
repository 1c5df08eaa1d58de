"""Merging client A into client B (SPEC §12), on SQLite and PostgreSQL, and concurrently."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from billingworker.domain.accounts.merging import merge_clients
from billingworker.domain.errors import Conflict, NotFound, ValidationError
from billingworker.domain.models import (
    Affiliate,
    Client,
    ClientMerge,
    ClientNote,
    ClientUser,
    CreditHistory,
    Invoice,
    PayMethod,
    Transaction,
    User,
)
from tests import factories as f
from tests.domain.client_records_factories import NOW, TODAY, client_with_every_record, rows_of_client
from tests.factories import race


def merge(session, a, b):
    return merge_clients(session, a, b, as_of=TODAY, now=NOW)


def test_merge_moves_everything_and_adds_the_credit(session):
    shared = User(email="shared@example.com")
    session.add(shared)
    session.flush()
    a = client_with_every_record(session, tag="a", credit="25.00", shared_user=shared)
    b = client_with_every_record(session, tag="b", credit="10.00", shared_user=shared)
    session.commit()
    rows_a, rows_b = rows_of_client(session, a.client_id), rows_of_client(session, b.client_id)

    result = merge(session, a.client_id, b.client_id)
    session.commit()

    assert result.outcome == "merged"
    assert session.get(Client, a.client_id) is None
    assert rows_of_client(session, a.client_id) == {}, "nothing is left on the source"
    after = rows_of_client(session, b.client_id)
    # every table holds the sum of both, except where a unique key merges two rows into one
    special = {"client_users", "affiliates", "client_notes", "credit_history"}
    for table in set(rows_a) | set(rows_b):
        if table not in special:
            assert after[table] == rows_a.get(table, 0) + rows_b.get(table, 0), table
    # users: A's owner moves as an ordinary user, the shared user is linked once, B keeps its owner
    links = {u: o for u, o in session.execute(select(ClientUser.user_id, ClientUser.is_owner)
                                              .where(ClientUser.client_id == b.client_id)).all()}
    assert links == {b.user_id: True, a.user_id: False, shared.id: False}
    # one default card: B's
    defaults = session.scalars(select(PayMethod.id).where(PayMethod.client_id == b.client_id,
                                                          PayMethod.is_default.is_(True))).all()
    assert defaults == [b.pay_method_id]
    # one affiliate account, with both balances
    aff = session.scalars(select(Affiliate).where(Affiliate.client_id == b.client_id)).one()
    assert (aff.visitors, aff.balance, aff.withdrawn) == (6, Decimal("10.00"), Decimal("2.00"))
    # credit: A's balance added; A's history moved along (no extra line: it would count A twice)
    assert session.get(Client, b.client_id).credit_balance == Decimal("35.00")
    assert session.scalar(select(func.count()).select_from(CreditHistory)
                          .where(CreditHistory.client_id == a.client_id)) == 0
    assert after["credit_history"] == rows_a["credit_history"] + rows_b["credit_history"]
    # transactions and invoices now belong to B
    assert session.scalar(select(func.count()).select_from(Transaction)
                          .where(Transaction.client_id == b.client_id)) == 4
    assert session.get(Invoice, a.unpaid_invoice_id).client_id == b.client_id
    # the audit: a note on B and the client_merges row
    note = session.scalars(select(ClientNote.note).where(ClientNote.client_id == b.client_id)
                           .order_by(ClientNote.id.desc())).first()
    assert f"Merged client #{a.client_id}" in note and "Admin notes of a" in note
    record = session.get(ClientMerge, a.client_id)
    assert record.target_client_id == b.client_id
    assert json.loads(record.moved)["invoices"] == 4 and json.loads(record.moved)["credit_added"] == "25.00"


def test_merge_into_a_client_without_owner_or_affiliate_moves_them(session):
    a = client_with_every_record(session, tag="a")
    b = f.client(session, email="bare@example.com")
    session.commit()

    merge(session, a.client_id, b.id)
    session.commit()

    assert session.scalars(select(ClientUser.is_owner).where(ClientUser.client_id == b.id)).all() == [True]
    assert session.scalars(select(Affiliate.visitors).where(Affiliate.client_id == b.id)).all() == [3]
    assert session.scalars(select(PayMethod.is_default).where(PayMethod.client_id == b.id)).all() == [True]


def test_merge_refuses_different_currencies_and_changes_nothing(session):
    eur = f.currency(session, "EUR")
    a = client_with_every_record(session, tag="a")
    b = client_with_every_record(session, tag="b", currency_id=eur.id)
    session.commit()
    before = rows_of_client(session, a.client_id), rows_of_client(session, b.client_id)

    with pytest.raises(Conflict, match="different currencies"):
        merge(session, a.client_id, b.client_id)
    session.rollback()

    assert (rows_of_client(session, a.client_id), rows_of_client(session, b.client_id)) == before
    assert session.get(ClientMerge, a.client_id) is None


def test_merge_refuses_itself_and_unknown_clients(session):
    a = f.client(session)
    session.commit()
    with pytest.raises(ValidationError) as same:
        merge(session, a.id, a.id)
    assert same.value.field == "target_client_id"
    with pytest.raises(NotFound) as unknown_target:
        merge(session, a.id, 9999)
    assert unknown_target.value.field == "target_client_id"
    with pytest.raises(NotFound) as unknown_source:
        merge(session, 9999, a.id)
    assert unknown_source.value.field == "source_client_id"


def test_merging_twice_is_merging_once(session):
    a = client_with_every_record(session, tag="a")
    b = client_with_every_record(session, tag="b")
    c = f.client(session, email="third@example.com")
    session.commit()
    first = merge(session, a.client_id, b.client_id)
    session.commit()
    rows_b = rows_of_client(session, b.client_id)

    again = merge(session, a.client_id, b.client_id)
    session.commit()

    assert again.outcome == "already_merged" and again.moved == first.moved
    assert rows_of_client(session, b.client_id) == rows_b
    assert session.get(Client, b.client_id).credit_balance == Decimal("50.00")
    # the same source into another target is a different request: refused
    with pytest.raises(Conflict, match="already merged"):
        merge(session, a.client_id, c.id)


def test_two_workers_merging_at_once_merge_once(server_engine, server_session):
    a = client_with_every_record(server_session, tag="a")
    b = client_with_every_record(server_session, tag="b")
    server_session.commit()

    results = race(server_engine, *[lambda s: merge(s, a.client_id, b.client_id)] * 3)

    assert sorted(r.outcome for r in results) == ["already_merged", "already_merged", "merged"]
    server_session.rollback()
    assert server_session.get(Client, b.client_id).credit_balance == Decimal("50.00")
    assert server_session.scalar(select(func.count()).select_from(Invoice).where(Invoice.client_id == b.client_id)) == 8


def test_merges_in_both_directions_at_once_do_not_deadlock(server_engine, server_session):
    a = client_with_every_record(server_session, tag="a")
    b = client_with_every_record(server_session, tag="b")
    server_session.commit()
    outcomes: list = []

    def attempt(source, target):
        def work(s):
            try:
                outcomes.append(merge(s, source, target).outcome)
            except ValidationError as exc:
                outcomes.append(exc.field)
        return work

    race(server_engine, attempt(a.client_id, b.client_id), attempt(b.client_id, a.client_id))

    assert sorted(outcomes) == ["merged", "target_client_id"], "one merged, the other found its target gone"
    server_session.rollback()
    assert server_session.scalar(select(func.count()).select_from(Client)) == 1
    assert server_session.scalar(select(func.count()).select_from(ClientMerge)) == 1


def test_a_client_created_after_a_merge_can_be_merged_too(session):
    # SQLite hands the merged-away (highest) id to the next client: its old record must give way.
    b = f.client(session, email="b@example.com")
    a = f.client(session, email="a@example.com", credit_balance=Decimal("1.00"))
    session.commit()
    merge(session, a.id, b.id)
    session.commit()
    newcomer = f.client(session, email="new@example.com", credit_balance=Decimal("2.00"))
    session.commit()

    assert merge(session, newcomer.id, b.id).outcome == "merged"
    session.commit()

    assert session.get(Client, b.id).credit_balance == Decimal("3.00")
    assert session.get(ClientMerge, newcomer.id).target_client_id == b.id


def test_after_a_merge_the_target_history_still_adds_up_to_its_balance(session):
    # Given two clients whose credit came through the credit history
    from billingworker.domain.accounts.merging import merge_clients
    from billingworker.domain.payments.credit import change_credit

    a, b = f.client(session, email="a@example.com"), f.client(session, email="b@example.com")
    session.flush()
    change_credit(session, a.id, Decimal("30.00"), "Goodwill", as_of=date(2026, 1, 2), source="admin:1")
    change_credit(session, a.id, Decimal("-5.00"), "Correction", as_of=date(2026, 1, 3), source="admin:1")
    change_credit(session, b.id, Decimal("10.00"), "Refund as credit", as_of=date(2026, 1, 4), source="admin:1")
    session.commit()

    # When A is merged into B
    merge_clients(session, a.id, b.id, as_of=date(2026, 1, 10), now=datetime(2026, 1, 10, 9, tzinfo=UTC))
    session.commit()

    # Then B holds both balances and its history (A's lines moved over) sums to exactly that
    session.expire_all()
    balance = session.get(Client, b.id).credit_balance
    history = session.scalar(select(func.sum(CreditHistory.amount)).where(CreditHistory.client_id == b.id))
    assert balance == Decimal("35.00") and history == balance
