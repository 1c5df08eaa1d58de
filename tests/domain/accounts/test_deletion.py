"""Deleting a client (SPEC §12): everything goes but transactions; on SQLite and PostgreSQL."""

from __future__ import annotations

from decimal import Decimal

from sqlalchemy import func, select

from billingworker.domain.accounts.deletion import client_tables, delete_client
from billingworker.domain.models import (
    BilledPeriod,
    CancelRequest,
    Client,
    ClientUser,
    InvoiceLateFee,
    InvoiceReminder,
    JobFailure,
    ModuleCommand,
    PasswordResetToken,
    Transaction,
    User,
)
from tests import factories as f
from tests.domain.client_records_factories import NOW, client_with_every_record, rows_of_client
from tests.factories import race


def count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def test_client_tables_are_every_table_with_a_client_id():
    # Pinned, so that a new table is a deliberate choice for delete, merge and export.
    assert sorted(t.name for t in client_tables()) == sorted([
        "addons", "affiliates", "billable_items", "client_exports", "client_files", "client_notes",
        "client_users", "contacts", "credit_history", "domains", "email_log", "email_outbox", "invoice_items",
        "invoices", "job_failures", "module_commands", "orders", "pay_methods", "payment_captures", "quotes",
        "services", "tickets", "transactions"])


def test_delete_removes_everything_but_the_transactions(session):
    other = client_with_every_record(session, tag="keep")
    r = client_with_every_record(session, tag="gone")
    session.commit()
    other_rows = rows_of_client(session, other.client_id)

    result = delete_client(session, r.client_id, now=NOW)
    session.commit()

    assert result.outcome == "deleted"
    assert session.get(Client, r.client_id) is None
    # only the kept history still names the client
    assert rows_of_client(session, r.client_id) == {"job_failures": 1, "module_commands": 1}
    assert count(session, ModuleCommand, ModuleCommand.client_id == r.client_id) == 1
    assert count(session, JobFailure, JobFailure.client_id == r.client_id) == 1
    for model in (BilledPeriod, InvoiceReminder, InvoiceLateFee, CancelRequest):
        assert count(session, model) == 1, f"{model.__tablename__}: only the other client's row is left"
    # transactions survive, without client or invoice, and still say what they were for
    txs = {t.id: t for t in session.scalars(select(Transaction).where(Transaction.id.in_(r.transaction_ids)))}
    assert len(txs) == 2
    assert all(t.client_id is None and t.invoice_id is None for t in txs.values())
    paid = txs[r.transaction_ids[0]]
    assert paid.amount_in == Decimal("15.00") and "Invoice #" in paid.description
    assert f"deleted client #{r.client_id}" in paid.description
    assert result.transactions_kept == 2
    # users stay unless asked
    assert session.get(User, r.user_id) is not None
    assert result.export_files == [f"client-{r.client_id}-old.json"]
    assert result.deleted["invoices"] == 4 and result.deleted["services"] == 2
    # nothing of the other client was touched
    assert rows_of_client(session, other.client_id) == other_rows


def test_delete_with_users_removes_only_users_of_no_other_client(session):
    shared = User(email="shared@example.com")
    session.add(shared)
    session.flush()
    other = client_with_every_record(session, tag="keep", shared_user=shared)
    r = client_with_every_record(session, tag="gone", shared_user=shared)
    session.commit()

    result = delete_client(session, r.client_id, delete_users=True, now=NOW)
    session.commit()

    assert session.get(User, r.user_id) is None
    assert count(session, PasswordResetToken, PasswordResetToken.user_id == r.user_id) == 0
    assert session.get(User, shared.id) is not None, "the shared user still belongs to the other client"
    assert count(session, ClientUser, ClientUser.user_id == shared.id) == 1
    assert session.get(User, other.user_id) is not None
    assert result.deleted["users"] == 1


def test_deleting_twice_is_deleting_once(session):
    r = client_with_every_record(session)
    session.commit()
    delete_client(session, r.client_id, now=NOW)
    session.commit()
    txs_before = session.execute(select(Transaction.id, Transaction.description).order_by(Transaction.id)).all()

    again = delete_client(session, r.client_id, now=NOW)
    session.commit()

    assert again.outcome == "already_deleted"
    assert again.transactions_kept == 2
    assert session.execute(select(Transaction.id, Transaction.description).order_by(Transaction.id)).all() \
        == txs_before, "the descriptions are annotated once"


def test_deleting_a_client_that_never_existed_completes_as_not_found(session):
    result = delete_client(session, 777, now=NOW)
    assert result.outcome == "not_found" and result.deleted == {}


def test_two_workers_deleting_at_once_delete_once(pg_engine, pg_session):
    r = client_with_every_record(pg_session)
    pg_session.commit()

    results = race(pg_engine, *[lambda s: delete_client(s, r.client_id, delete_users=True, now=NOW)] * 2)

    assert sorted(x.outcome for x in results) == ["already_deleted", "deleted"]
    pg_session.rollback()
    assert pg_session.get(Client, r.client_id) is None
    assert count(pg_session, Transaction) == 2
    assert count(pg_session, User) == 0


def test_a_client_created_after_a_deletion_is_deleted_too(session):
    # SQLite hands the deleted (highest) id to the next client: the old receipt must not answer for it.
    first = f.client(session)
    session.commit()
    delete_client(session, first.id, now=NOW)
    session.commit()
    newcomer = f.client(session)
    session.commit()

    assert delete_client(session, newcomer.id, now=NOW).outcome == "deleted"
    session.commit()
    assert session.get(Client, newcomer.id) is None
