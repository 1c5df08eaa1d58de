"""The same message ten times, for every kind of public job, into a real worker of two processes
and four threads each (so copies run at the same moment), on each server database: each has the
effect of one. Written into Redis as Dramatiq's Redis broker writes it, the copies share one
message id, as a redelivery or a retried HTTP request would.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from sqlalchemy.orm import Session

from billingworker.domain.models import User
from tests import factories as f

from .conftest import dead_letters, message, rows, scalar, wait_for, wait_until_idle
from .server_databases import (  # noqa: F401 - fixtures: the test runs on each server database
    on_each_server_database,
    server_database_engine,
    server_database_url,
)
from .test_real_worker import today

pytestmark = pytest.mark.integration

COPIES = 10


def test_each_public_job_sent_ten_times_acts_once(start_worker, broker, pg_engine, redis_client, smtp_sink):
    sink, mail_url = smtp_sink
    engine = pg_engine
    day = today()
    # Given a client per job, each with what its job needs
    with Session(engine, expire_on_commit=False) as s:
        c = {name: f.client(s, email=f"{name}@example.com") for name in (
            "billed", "funded", "drafted", "paying", "credited", "written", "reset", "moved", "merged_from",
            "merged_into", "exported", "closed", "selected", "pruned", "deleted", "carded", "anonymised",
            "phoned", "mailed")}
        f.service(s, c["billed"], next_due_date=day + timedelta(days=2))
        unpaid = f.invoice(s, c["paying"], due=day, lines=[("Hosting", "10.00", False)], status="Draft")
        unpaid.status, unpaid.number = "Unpaid", 900_000  # (far from the numbers the worker gives)
        hosting = f.service(s, c["moved"], next_due_date=day + timedelta(days=20), amount=Decimal("30.00"))
        selected = f.service(s, c["selected"], next_due_date=day + timedelta(days=40), amount=Decimal("12.00"))
        kept, pruned = (f.service(s, c["pruned"], next_due_date=day + timedelta(days=40), domain=f"{n}.example")
                        for n in ("kept", "pruned"))
        card = f.card(s, c["carded"], gateway_token="tok_deletable_4242")
        c["phoned"].phone_number, c["phoned"].country = "020 7946 0000", "GB"
        user = User(email="reset-user@example.com", first_name="Ada")
        s.add(user)
        s.commit()
    ids = {name: client.id for name, client in c.items()}
    email_id = f.outbox_row(engine, ids["mailed"], status="queued", age=timedelta(0))
    jobs = [
        message("generate_due_invoices", client_id=ids["billed"]),
        message("create_add_funds_invoice", client_id=ids["funded"], amount="25.00"),
        message("create_invoice", client_id=ids["drafted"]),
        message("apply_payment", invoice_id=unpaid.id, amount="10.00", gateway="bank", transaction_id="TX-1"),
        message("adjust_credit", client_id=ids["credited"], amount="7.00", description="Goodwill"),
        message("send_client_email", client_id=ids["written"], subject="Hello", body="We moved."),
        message("send_password_reset_email", email="reset-user@example.com", requested_by="admin"),
        message("mass_update", client_id=ids["moved"], items=[{"type": "service", "id": hosting.id}],
                changes={"next_due_date": (day + timedelta(days=25)).isoformat()}, create_prorata_invoice=True),
        message("merge_clients", source_client_id=ids["merged_from"], target_client_id=ids["merged_into"]),
        message("export_client_data", client_id=ids["exported"]),
        message("close_client", client_id=ids["closed"]),
        message("invoice_selected_items", client_id=ids["selected"], items=[{"type": "service", "id": selected.id}]),
        message("delete_selected_items", client_id=ids["pruned"], items=[{"type": "service", "id": pruned.id}]),
        message("delete_client", client_id=ids["deleted"]),
        message("remove_pay_method", pay_method_id=card.id),
        message("anonymise_client", client_id=ids["anonymised"], allow_unpaid=True),
        message("normalize_phone_numbers", client_id=ids["phoned"]),
        message("deliver_email", queue_name="emails", email_id=email_id),
    ]

    # When each is written ten times before a worker of 2 x 4 threads starts
    for job in jobs:
        for _ in range(COPIES):
            broker.enqueue(job)
    worker = start_worker(processes=2, threads=4, env={"MAIL_URL": mail_url})
    wait_until_idle(redis_client, timeout=120)
    wait_for(lambda: not scalar(engine, "SELECT count(*) FROM email_outbox WHERE status IN ('queued', 'sending')"),
             "every email out", 60)

    # Then every copy ran, and nothing failed
    assert [worker.jobs_done(job.actor_name) >= COPIES for job in jobs] == [True] * len(jobs)
    assert dead_letters(redis_client) == [] and rows(engine, "SELECT actor, reason FROM job_failures") == []

    def invoices(name: str) -> list:
        return rows(engine, "SELECT kind, status, total FROM invoices WHERE client_id = :c ORDER BY id", c=ids[name])

    # ... and each acted once
    assert [(k, s) for k, s, _ in invoices("billed")] == [("standard", "Unpaid")]
    assert [(k, s, t) for k, s, t in invoices("funded")] == [("add_funds", "Unpaid", Decimal("25.00"))]
    assert [(k, s) for k, s, _ in invoices("drafted")] == [("standard", "Draft")]
    assert [s for _, s, _ in invoices("paying")] == ["Paid"]
    assert scalar(engine, "SELECT count(*) FROM transactions WHERE transaction_id = 'TX-1'") == 1
    assert scalar(engine, "SELECT credit_balance FROM clients WHERE id = :c", c=ids["credited"]) == Decimal("7.00")
    assert scalar(engine, "SELECT count(*) FROM credit_history WHERE client_id = :c", c=ids["credited"]) == 1
    assert scalar(engine, "SELECT count(*) FROM password_reset_tokens WHERE user_id = :u", u=user.id) == 1
    assert len(invoices("moved")) == 1, "one prorata invoice"
    assert scalar(engine, "SELECT next_due_date FROM services WHERE id = :i", i=hosting.id) == day + timedelta(days=25)
    assert scalar(engine, "SELECT count(*) FROM clients WHERE id = :c", c=ids["merged_from"]) == 0
    assert scalar(engine, "SELECT count(*) FROM client_merges") == 1
    assert scalar(engine, "SELECT count(*) FROM client_exports WHERE client_id = :c", c=ids["exported"]) == 1
    assert scalar(engine, "SELECT status FROM clients WHERE id = :c", c=ids["closed"]) == "Closed"
    assert len(invoices("selected")) == 1
    assert scalar(engine, "SELECT count(*) FROM billed_periods WHERE item_id = :i AND item_type = 'service'",
                  i=selected.id) == 1
    assert [i for (i,) in rows(engine, "SELECT id FROM services WHERE client_id = :c", c=ids["pruned"])] == [kept.id]
    assert scalar(engine, "SELECT count(*) FROM clients WHERE id = :c", c=ids["deleted"]) == 0
    assert scalar(engine, "SELECT count(*) FROM pay_methods WHERE client_id = :c", c=ids["carded"]) == 0
    assert scalar(engine, "SELECT first_name FROM clients WHERE id = :c", c=ids["anonymised"]) == "Anonymised"
    assert scalar(engine, "SELECT phone_number FROM clients WHERE id = :c", c=ids["phoned"]) == "+44.2079460000"
    assert scalar(engine, "SELECT status FROM email_outbox WHERE id = :i", i=email_id) == "sent"
    # ... every email queued once, received once
    outbox = rows(engine, "SELECT template, count(*) FROM email_outbox GROUP BY template ORDER BY template")
    assert all(n == 1 for _, n in outbox if _ != "invoice_created"), outbox
    sent = scalar(engine, "SELECT count(*) FROM email_outbox WHERE status = 'sent'")
    assert sent == scalar(engine, "SELECT count(*) FROM email_outbox")
    assert len(sink.counts()) == sent and sink.duplicates() == 0, "every email received once"
