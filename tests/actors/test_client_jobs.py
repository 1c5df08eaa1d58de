"""The client lifecycle jobs (close, delete, merge, export) through a real worker: delivered
twice they act once; bad input is dead-lettered; files on disk follow the rows."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import select

from billingworker import runtime as rt
from billingworker.actors import broker
from billingworker.actors.clients import close_client, delete_client, export_client_data, merge_clients
from billingworker.domain.models import Client, ClientExport, ClientMerge, Invoice, JobFailure, Transaction
from tests import factories as f
from tests.domain.client_records_factories import client_with_every_record, secrets

from .conftest import count, dead_letters, drain, twice


def test_close_client_delivered_twice_closes_once(session, worker):
    r = client_with_every_record(session)
    session.commit()

    twice(close_client.send(client_id=r.client_id))

    assert dead_letters() == []
    session.expire_all()
    assert session.get(Client, r.client_id).status == "Closed"
    assert session.get(Invoice, r.unpaid_invoice_id).status == "Cancelled"
    assert session.get(Client, r.client_id).credit_balance == 29, "the credit applied came back once"


def test_delete_client_keeps_transactions_and_removes_the_export_files(session, worker, exports_dir):
    keep = client_with_every_record(session, tag="keep")
    r = client_with_every_record(session, tag="gone")
    session.commit()
    exports_dir.mkdir(parents=True)
    for name in (f"client-{r.client_id}-old.json", f"client-{r.client_id}-stray.json",
                 f"client-{keep.client_id}-old.json", f"client-{r.client_id}0-x.json"):
        (exports_dir / name).write_text("{}")

    twice(delete_client.send(client_id=r.client_id, delete_users=True))

    assert dead_letters() == []
    session.expire_all()
    assert session.get(Client, r.client_id) is None
    assert count(session, Transaction) == 4, "both clients' transactions stay"
    assert sorted(p.name for p in exports_dir.iterdir()) == sorted([
        f"client-{r.client_id}0-x.json", f"client-{keep.client_id}-old.json"]), "only the deleted client's files go"


def test_deleting_an_unknown_client_completes(session, worker):
    delete_client.send(client_id=4242)
    drain()
    assert dead_letters() == [] and count(session, JobFailure) == 0


def test_merge_clients_delivered_twice_merges_once(session, worker):
    a = client_with_every_record(session, tag="a")
    b = client_with_every_record(session, tag="b")
    session.commit()

    twice(merge_clients.send(source_client_id=a.client_id, target_client_id=b.client_id))

    assert dead_letters() == []
    session.expire_all()
    assert session.get(Client, a.client_id) is None
    assert session.get(Client, b.client_id).credit_balance == 50
    assert count(session, Invoice, Invoice.client_id == b.client_id) == 8
    assert count(session, ClientMerge) == 1


def test_merge_of_different_currencies_is_dead_lettered_and_changes_nothing(session, worker):
    eur = f.currency(session, "EUR")
    a = client_with_every_record(session, tag="a")
    b = client_with_every_record(session, tag="b", currency_id=eur.id)
    session.commit()

    message = merge_clients.send(source_client_id=a.client_id, target_client_id=b.client_id)
    drain()

    [dead] = dead_letters()
    assert dead.message_id == message.message_id and dead.options.get("retries", 0) == 0
    failure = session.execute(select(JobFailure).where(JobFailure.message_id == message.message_id)).scalar_one()
    assert failure.error == "Conflict" and "different currencies" in failure.reason
    assert count(session, Invoice, Invoice.client_id == a.client_id) == 4 and count(session, ClientMerge) == 0


def test_merging_credit_beyond_what_the_books_hold_is_refused_and_changes_nothing(session, worker):
    a = f.client(session, credit_balance=Decimal("60000000000000.00"))
    b = f.client(session, credit_balance=Decimal("60000000000000.00"))
    session.commit()

    merge_clients.send(source_client_id=a.id, target_client_id=b.id)
    drain()

    assert len(dead_letters()) == 1
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.field == "source_client_id" and "beyond the largest amount the books hold" in failure.reason
    session.expire_all()
    assert session.get(Client, a.id) is not None and count(session, ClientMerge) == 0


@pytest.mark.parametrize("kwargs, field", [
    ({"source_client_id": 1, "target_client_id": 1}, "target_client_id"),
    ({"source_client_id": "x", "target_client_id": 1}, "source_client_id"),
    ({"source_client_id": 1}, "arguments"),
])
def test_bad_merge_input_is_dead_lettered_with_the_field_named(session, worker, kwargs, field):
    f.client(session)
    session.commit()
    merge_clients.send(**kwargs)
    drain()
    assert len(dead_letters()) == 1
    assert session.execute(select(JobFailure.field).where(JobFailure.actor == "merge_clients")).scalar_one() == field


def test_delete_users_must_be_a_boolean(session, worker):
    c = f.client(session)
    session.commit()
    delete_client.send(client_id=c.id, delete_users="yes")
    drain()
    assert len(dead_letters()) == 1 and session.get(Client, c.id) is not None


def test_export_delivered_twice_writes_one_file_without_secrets(session, worker, exports_dir):
    r = client_with_every_record(session, tag="a")
    session.commit()

    twice(export_client_data.send(client_id=r.client_id))

    assert dead_letters() == []
    [row] = session.scalars(select(ClientExport).where(ClientExport.filename != f"client-{r.client_id}-old.json"))
    [path] = list(exports_dir.iterdir())
    assert path.name == row.filename and path.stat().st_size == row.size_bytes
    assert row.request_key.startswith("export_client_data:message:")
    text = path.read_text()
    assert json.loads(text)["client_id"] == r.client_id
    assert not [name for name, value in secrets("a").items() if value in text]


def test_export_with_the_same_request_id_twice_writes_one_file(session, worker, exports_dir):
    c = f.client(session)
    session.commit()
    export_client_data.send(client_id=c.id, request_id="gdpr-7")
    export_client_data.send(client_id=c.id, request_id="gdpr-7")
    drain()
    assert count(session, ClientExport) == 1 and len(list(exports_dir.iterdir())) == 1
    assert session.scalar(select(ClientExport.request_key)) == "export_client_data:request:gdpr-7"


def test_a_redelivered_delete_never_deletes_a_new_client_that_got_the_same_id(session, worker, tmp_path):
    # Given a client deleted by a message
    c = f.client(session, email="old@example.com")
    session.commit()
    message = delete_client.send(client_id=c.id)
    drain()
    # and a new client given the same id afterwards (SQLite hands out the highest id again)
    session.expunge(c)
    session.add(Client(id=c.id, email="new@example.com", currency_id=c.currency_id))
    session.commit()

    # (with an export file of its own)
    rt.configure(exports_dir=tmp_path)
    (tmp_path / f"client-{c.id}-new.json").write_text("{}")

    # When the same message is delivered again
    broker.enqueue(message)
    drain()

    # Then the new client and its file are still there: the message's receipt answered
    session.expire_all()
    assert session.get(Client, c.id).email == "new@example.com"
    assert (tmp_path / f"client-{c.id}-new.json").exists()
    assert dead_letters() == []
