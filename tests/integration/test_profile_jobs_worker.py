"""remove_pay_method and anonymise_client through a real ``dramatiq`` worker process over real
Redis and PostgreSQL (issue 12): the worker boots from the environment, each message delivered
twice acts once, a refusal is dead-lettered in Redis after one attempt, and the export the
worker writes after the anonymisation holds no personal data."""

from __future__ import annotations

import json

import pytest
from sqlalchemy.orm import Session

from tests import factories as f
from tests.domain.client_records_factories import client_with_every_record

from .conftest import dead_letters, message, rows, scalar, wait_for, wait_until_idle

pytestmark = pytest.mark.integration

#: Personal data of the anonymised client (tag "p"), none of which may be exported afterwards.
PERSONAL = ("p@client.example", "owner-p@client.example", "bob-p@client.example", "Lovelace", "Admin notes of p",
            "Called p", "Visa of p", "Pemberton Holdings", "+44.2079460000")


def test_pay_method_removal_and_anonymisation_through_a_real_worker(start_worker, broker, pg_engine,
                                                                     redis_client, tmp_path):
    # Given a worker whose exports go to a folder of the test's own
    exports = tmp_path / "exports"
    start_worker(env={"EXPORTS_DIR": str(exports)})
    # ... a client with a default card the gateway deletes, and a second one it refuses to delete
    with Session(pg_engine, expire_on_commit=False) as s:
        holder = f.client(s, email="holder@example.com")
        deletable = f.card(s, holder, gateway_token="tok_deletable_4242")
        refused = f.card(s, holder, gateway_token="tok_refuse_1111", card_last_four="1111", is_default=False)
        # ... and a client with a record of every kind, owing two invoices
        r = client_with_every_record(s, tag="p", company_name="Pemberton Holdings", phone_number="+44.2079460000")
        s.commit()

    # When each removal is delivered twice (the same message), anonymisation is asked without
    # allowing the unpaid invoices, then allowing them (delivered twice), then an export
    for pay_method_id in (deletable.id, refused.id):
        removal = message("remove_pay_method", pay_method_id=pay_method_id)
        broker.enqueue(removal)
        broker.enqueue(removal)
    broker.enqueue(message("anonymise_client", client_id=r.client_id))
    wait_until_idle(redis_client)
    refusal = scalar(pg_engine, "SELECT reason FROM job_failures WHERE actor = 'anonymise_client'")
    anonymisation = message("anonymise_client", client_id=r.client_id, allow_unpaid=True)
    broker.enqueue(anonymisation)
    broker.enqueue(anonymisation)
    wait_until_idle(redis_client)
    broker.enqueue(message("export_client_data", client_id=r.client_id, request_id="after"))
    wait_for(lambda: scalar(pg_engine, "SELECT count(*) FROM client_exports WHERE client_id = :c", c=r.client_id),
             "the export after the anonymisation")
    wait_until_idle(redis_client)

    # Then the deletable card is gone and the refused one was promoted to default, its record
    # kept with the gateway's words and one failure row for the operators
    methods = rows(pg_engine, "SELECT id, is_default, removal_error FROM pay_methods WHERE client_id = :c",
                   c=holder.id)
    assert [(m.id, m.is_default) for m in methods] == [(refused.id, True)]
    assert "in use by an active subscription" in methods[0].removal_error
    assert scalar(pg_engine, "SELECT count(*) FROM job_failures WHERE actor = 'remove_pay_method'") == 1
    # ... the refusal of the anonymisation was dead-lettered after one attempt, naming why
    letters = dead_letters(redis_client)
    assert [(m["actor_name"], m["kwargs"]) for m in letters] == [("anonymise_client", {"client_id": r.client_id})]
    assert "still owes 2 invoice(s)" in refusal
    # (and once the client was anonymised, the failure rows keep their job and error, not their words)
    assert scalar(pg_engine, "SELECT reason FROM job_failures WHERE actor = 'anonymise_client'") == "[anonymised]"
    # ... the client was anonymised once, is Closed, and its fiscal records are all there
    client = rows(pg_engine, "SELECT status, first_name, email, anonymised_at FROM clients WHERE id = :c",
                  c=r.client_id)[0]
    assert (client.status, client.first_name) == ("Closed", "Anonymised") and client.anonymised_at is not None
    assert [k for (k,) in rows(pg_engine, "SELECT key FROM job_receipts WHERE actor = 'anonymise_client' "
                               "ORDER BY key")] == [f"anonymise_client:client:{r.client_id}",
                                                    f"anonymise_client:message:{anonymisation.message_id}"]
    assert scalar(pg_engine, "SELECT count(*) FROM client_notes WHERE client_id = :c", c=r.client_id) == 1
    assert scalar(pg_engine, "SELECT count(*) FROM invoices WHERE client_id = :c", c=r.client_id) == 4
    assert scalar(pg_engine, "SELECT sum(amount_in) FROM transactions WHERE client_id = :c", c=r.client_id) == 40
    # ... and the export the worker wrote afterwards holds none of the personal data
    filename = scalar(pg_engine, "SELECT filename FROM client_exports WHERE client_id = :c", c=r.client_id)
    text = (exports / filename).read_text()
    assert json.loads(text)["profile"]["email"] == client.email == f"anonymised-client-{r.client_id}@anonymised.invalid"
    assert [value for value in PERSONAL if value in text] == []
