"""remove_pay_method and anonymise_client through a real worker (in-process broker): delivered
twice they act once; bad input and refusals are dead-lettered with a reason; a gateway that
raises is retried; export files follow the anonymisation."""

from __future__ import annotations

import json
import time

import pytest
from sqlalchemy import select, update

from billingworker.actors import pay_methods
from billingworker.actors.clients import export_client_data
from billingworker.actors.pay_methods import remove_pay_method
from billingworker.actors.privacy import anonymise_client
from billingworker.adapters.gateway import TEST_GATEWAY
from billingworker.domain.models import Client, ClientExport, JobFailure, PayMethod
from tests import factories as f
from tests.domain.client_records_factories import client_with_every_record

from .conftest import dead_letters, drain, twice


def test_remove_pay_method_delivered_twice_removes_once(session, worker):
    # Given a card at the gateway
    c = f.client(session)
    card_id = f.card(session, c).id
    session.commit()

    # When its removal message is delivered twice
    twice(remove_pay_method.send(pay_method_id=card_id))

    # Then it was removed, the gateway asked once
    assert dead_letters() == []
    session.expire_all()
    assert session.get(PayMethod, card_id) is None
    assert TEST_GATEWAY.deletion_calls == 1, "the redelivery repeated the first answer"


def test_a_refusal_completes_keeps_the_record_and_tells_the_operator(session, worker):
    # Given a card its gateway will not delete
    c = f.client(session)
    card = f.card(session, c, gateway_token="tok_refuse_4242")
    session.commit()

    # When its removal is asked
    remove_pay_method.send(pay_method_id=card.id)
    drain()

    # Then the message completes (a refusal is an answer), the record stays with the reason,
    # and a job_failures row (which parks nobody) tells the operators
    assert dead_letters() == []
    session.expire_all()
    assert "in use" in session.get(PayMethod, card.id).removal_error
    failure = session.scalars(select(JobFailure)).one()
    assert (failure.actor, failure.error, failure.client_id, failure.field) == (
        "remove_pay_method", "PayMethodKept", c.id, "pay_method_id")
    assert session.get(Client, c.id).failure_count == 0


def test_a_gateway_that_raises_is_retried_and_the_retry_removes_it(session, worker, monkeypatch):
    # Given a card whose gateway is unreachable (and few, quick retries: a failing test must not
    # wait out ten real backoffs in the worker's teardown)
    monkeypatch.setitem(remove_pay_method.options, "max_retries", 3)
    monkeypatch.setitem(remove_pay_method.options, "min_backoff", 2000)
    monkeypatch.setitem(remove_pay_method.options, "max_backoff", 4000)
    c = f.client(session)
    card_id = f.card(session, c, gateway_token="tok_unavailable_4242").id
    session.commit()

    # When its removal is asked: the first attempt fails and writes why on the record
    remove_pay_method.send(pay_method_id=card_id)
    deadline = time.monotonic() + 30
    error = ""
    while not error and time.monotonic() < deadline:
        error = session.scalar(select(PayMethod.removal_error).where(PayMethod.id == card_id))
        # Ended before the sleep: on SQLite each transaction holds the writer lock from its start
        # (BEGIN IMMEDIATE), and a poll that slept inside one starved the worker's write.
        session.rollback()
        time.sleep(0.05)
    assert "will be retried" in error
    # ... and the gateway comes back before the retry (here: the token it answers for)
    session.execute(update(PayMethod).where(PayMethod.id == card_id).values(gateway_token="tok_back_4242"))
    session.commit()
    drain()

    # Then the retry removed it at the gateway and here; nothing dead-lettered
    assert dead_letters() == []
    session.expire_all()
    assert session.get(PayMethod, card_id) is None
    # (a loaded machine may run a retry before the gateway came back: asked again, harmless)
    assert TEST_GATEWAY.deletion_calls >= 2 and len(TEST_GATEWAY.deletions) == 1


def test_on_the_last_attempt_a_gateway_that_raises_keeps_the_record_and_stops(session, worker, monkeypatch):
    # Given a card whose gateway is unreachable, and the message on its last attempt
    monkeypatch.setattr(pay_methods, "last_attempt", lambda actor: actor is remove_pay_method)
    c = f.client(session)
    card_id = f.card(session, c, gateway_token="tok_unavailable_4242").id
    session.commit()

    # When its removal runs
    remove_pay_method.send(pay_method_id=card_id)
    drain()

    # Then the message completes (no retry, no dead letter), the record stays with the error,
    # and the operators get a failure row
    assert dead_letters() == [] and TEST_GATEWAY.deletion_calls == 1
    session.expire_all()
    kept = session.get(PayMethod, card_id)
    assert "temporarily unavailable" in kept.removal_error and "retried" not in kept.removal_error
    assert session.scalars(select(JobFailure.error)).all() == ["PayMethodKept"]


@pytest.mark.parametrize("kwargs, field", [
    ({"pay_method_id": "x"}, "pay_method_id"),
    ({"pay_method_id": 1, "force": "yes"}, "force"),
])
def test_bad_input_to_remove_pay_method_is_dead_lettered_at_once(session, worker, kwargs, field):
    remove_pay_method.send(**kwargs)
    drain()
    assert len(dead_letters()) == 1
    assert session.scalars(select(JobFailure.field)).all() == [field]


def test_anonymise_client_refused_while_owed_then_allowed_removes_the_export_files(session, worker, exports_dir):
    # Given a client owing invoices, with an export file on disk (and a stray one of its own)
    r = client_with_every_record(session)
    session.commit()
    exports_dir.mkdir(parents=True)
    for name in (f"client-{r.client_id}-old.json", f"client-{r.client_id}-stray.json", "client-999-old.json"):
        (exports_dir / name).write_text('{"profile": "personal"}')

    # When anonymisation is asked without allowing unpaid invoices
    anonymise_client.send(client_id=r.client_id)
    drain()

    # Then it is refused and dead-lettered, naming why; nothing changed
    assert len(dead_letters()) == 1
    reason = session.scalar(select(JobFailure.reason).where(JobFailure.actor == "anonymise_client"))
    assert "still owes 2 invoice(s)" in reason
    session.expire_all()
    assert session.get(Client, r.client_id).anonymised_at is None
    assert len(list(exports_dir.iterdir())) == 3

    # When it is asked again allowing them, and delivered twice
    twice(anonymise_client.send(client_id=r.client_id, allow_unpaid=True))

    # Then it was anonymised once; its files are gone from disk, another client's stay
    session.expire_all()
    assert session.get(Client, r.client_id).anonymised_at is not None
    assert [p.name for p in exports_dir.iterdir()] == ["client-999-old.json"]
    assert TEST_GATEWAY.deletion_calls == 1
    assert len(dead_letters()) == 1, "only the refused message"


def test_an_export_after_anonymisation_holds_no_personal_data(session, worker, exports_dir):
    # Given a client with a record of every kind
    r = client_with_every_record(session, tag="zed", company_name="Zed Widgets", phone_number="+1.5551234567")
    session.commit()

    # When it is anonymised, then exported
    anonymise_client.send(client_id=r.client_id, allow_unpaid=True)
    drain()
    export_client_data.send(client_id=r.client_id, request_id="after-anonymisation")
    drain()

    # Then the file the worker wrote holds none of its personal data
    assert dead_letters() == []
    filename = session.scalar(select(ClientExport.filename).where(ClientExport.client_id == r.client_id))
    text = (exports_dir / filename).read_text()
    assert json.loads(text)["profile"]["first_name"] == "Anonymised"
    for personal in ("zed@client.example", "owner-zed@client.example", "bob-zed@client.example", "Lovelace",
                     "Zed Widgets", "+1.5551234567", "Admin notes of zed", "Called zed"):
        assert personal not in text
