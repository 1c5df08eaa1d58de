"""Exporting a client's data (SPEC §12): valid JSON, no secrets, once per request key."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from billingworker.domain.accounts.exporting import export_client_data, export_filename
from billingworker.domain.errors import Conflict, NotFound
from billingworker.domain.models import ClientExport
from tests.domain.client_records_factories import NOW, client_with_every_record, secrets
from tests.factories import race


def export(session, client_id, tmp_path, key="export_client_data:message:m1"):
    return export_client_data(session, client_id, exports_dir=tmp_path, request_key=key, now=NOW)


def test_export_round_trips_as_json_with_every_kind_of_record(session, tmp_path):
    r = client_with_every_record(session, tag="a")
    client_with_every_record(session, tag="z")  # another client's data must not leak in
    session.commit()

    result = export(session, r.client_id, tmp_path)
    session.commit()

    path = tmp_path / result.filename
    assert result.filename == export_filename(r.client_id, "export_client_data:message:m1")
    raw = path.read_bytes()
    assert result.size_bytes == len(raw)
    doc = json.loads(raw)
    assert doc["client_id"] == r.client_id and doc["format"] == "billingworker.client_export"
    profile = doc["profile"]
    assert profile["email"] == "a@client.example" and profile["currency"] == "USD"
    assert profile["credit_balance"] == "25.00", "money as a decimal string in the currency's minor unit"
    assert doc["generated_at"] == NOW.isoformat()
    counts = {k: len(v) for k, v in doc.items() if isinstance(v, list)}
    assert counts == {"contacts": 1, "users": 1, "pay_methods": 1, "services": 2, "addons": 1, "domains": 1,
                      "billable_items": 1, "invoices": 4, "transactions": 2, "credit_history": 2, "emails": 1,
                      "quotes": 1, "orders": 1, "tickets": 1, "notes": 1, "files": 1}
    unpaid = next(i for i in doc["invoices"] if i["id"] == r.unpaid_invoice_id)
    assert unpaid["total"] == "10.00" and unpaid["date_due"] == "2026-01-15"
    assert [item["description"] for item in unpaid["items"]] == ["Shared Hosting"]
    assert doc["pay_methods"][0] == {"id": r.pay_method_id, "type": "RemoteCreditCard", "description": "Visa of a",
                                     "gateway_name": "testgateway", "card_type": "", "card_last_four": "4242",
                                     "card_expiry": "12/2030", "is_default": True,
                                     "created_at": doc["pay_methods"][0]["created_at"]}
    assert doc["users"][0]["email"] == "owner-a@client.example" and doc["users"][0]["is_owner"] is True
    assert doc["affiliate"]["visitors"] == 3
    assert "z@client.example" not in raw.decode()
    row = session.scalars(select(ClientExport).where(ClientExport.id == result.export_id)).one()
    assert (row.filename, row.size_bytes, row.sha256) == (result.filename, result.size_bytes, result.sha256)


def test_export_holds_no_secret(session, tmp_path):
    r = client_with_every_record(session, tag="a")
    session.commit()

    result = export(session, r.client_id, tmp_path)
    text = (tmp_path / result.filename).read_text()

    for name, value in secrets("a").items():
        assert value not in text, f"{name} leaked into the export"
    for column in ("password_hash", "security_answer_hash", "encrypted_data", "gateway_token", "token_hash"):
        assert f'"{column}"' not in text


def test_the_same_request_exports_once(session, tmp_path):
    r = client_with_every_record(session)
    session.commit()
    first = export(session, r.client_id, tmp_path)
    session.commit()

    again = export(session, r.client_id, tmp_path)
    session.commit()

    assert again.outcome == "already_exported" and again.filename == first.filename
    assert session.scalar(select(func.count()).select_from(ClientExport)
                          .where(ClientExport.client_id == r.client_id)) == 2  # the factory's and ours
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.filename], "no temporary file is left"
    other = export(session, r.client_id, tmp_path, key="export_client_data:message:m2")
    assert other.outcome == "exported" and other.filename != first.filename


def test_a_rolled_back_export_is_rewritten_under_the_same_name(session, tmp_path):
    r = client_with_every_record(session)
    session.commit()
    lost = export(session, r.client_id, tmp_path)
    session.rollback()

    redelivered = export(session, r.client_id, tmp_path)
    session.commit()

    assert redelivered.outcome == "exported" and redelivered.filename == lost.filename
    assert len(list(tmp_path.iterdir())) == 1


def test_export_refuses_unknown_clients_and_a_key_of_another_client(session, tmp_path):
    a = client_with_every_record(session, tag="a")
    b = client_with_every_record(session, tag="b")
    session.commit()
    with pytest.raises(NotFound):
        export(session, 999, tmp_path)
    export(session, a.client_id, tmp_path, key="export_client_data:request:r1")
    session.commit()
    with pytest.raises(Conflict):
        export(session, b.client_id, tmp_path, key="export_client_data:request:r1")


def test_two_workers_exporting_the_same_request_write_one_file(pg_engine, pg_session, tmp_path):
    r = client_with_every_record(pg_session)
    pg_session.commit()

    results = race(pg_engine, *[lambda s: export(s, r.client_id, tmp_path)] * 2)

    assert sorted(x.outcome for x in results) == ["already_exported", "exported"]
    assert len({x.sha256 for x in results}) == 1
    assert len(list(tmp_path.iterdir())) == 1
    pg_session.rollback()
    assert pg_session.scalar(select(func.count()).select_from(ClientExport)) == 2
