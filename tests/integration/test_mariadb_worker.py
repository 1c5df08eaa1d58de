"""A real worker process on Redis + MariaDB runs a day's run end to end (collected only when
TEST_DATABASES names mariadb: see tests/conftest.py).

The worker is configured through the environment only, as in production, with a ``mysql://``
DATABASE_URL; the books are then checked as after the run on PostgreSQL (tests/integration/test_kill.py).
"""

from __future__ import annotations

import time
from datetime import date

import pytest
from bench.seed import seed
from sqlalchemy import text

from billingworker.db import session_factory
from billingworker.domain.models import Client
from billingworker.domain.settings import save_settings
from tests import factories as f

from .conftest import eml_files, message, pending_messages, rows, scalar

pytestmark = pytest.mark.integration

DAY = date(2026, 1, 15)


@pytest.fixture
def pg_url(mariadb_url) -> str:
    """The workers of ``start_worker`` get this database: MariaDB here."""
    return mariadb_url


@pytest.fixture
def pg_engine(mariadb_engine):
    return mariadb_engine


def test_a_worker_on_mariadb_runs_the_day_and_the_books_reconcile(start_worker, broker, pg_engine, redis_client,
                                                                 mail_dir):
    engine = pg_engine
    assert engine.dialect.name in ("mysql", "mariadb")
    # Given 300 clients with 900 services around the day, late fees on, some clients with a card
    seed(engine, clients=300, services=900, as_of=DAY, progress=False)
    s = session_factory(engine)()
    save_settings(s, late_fee_days=3, late_fee_amount="5.00", late_fee_type="fixed")
    s.execute(text("UPDATE clients SET auto_cc_processing = true WHERE id % 10 = 0"))
    for client_id in range(10, 301, 10):
        f.card(s, s.get(Client, client_id))
    s.commit()
    s.close()
    due_before = scalar(engine, "SELECT count(*) FROM services WHERE status IN ('Active','Pending','Suspended')"
                        " AND billing_cycle NOT IN ('Free','One Time') AND next_due_date <= :d"
                        " AND NOT EXISTS (SELECT 1 FROM cancel_requests c WHERE c.service_id = services.id)",
                        d=date(2026, 1, 29))

    # When a worker (two processes) runs the day, with the scheduler's nudges
    start_worker(processes=2, threads=4, env={"FAN_OUT_BATCH_SIZE": "50"})
    broker.enqueue(message("run_daily_automation", as_of=DAY.isoformat()))
    deadline, nudged, state = time.monotonic() + 180, time.monotonic(), {}
    while time.monotonic() < deadline:
        state = {"run": scalar(engine, "SELECT status FROM daily_runs"),
                 "queued_emails": scalar(engine, "SELECT count(*) FROM email_outbox"
                                                 " WHERE status IN ('queued', 'sending')"),
                 "messages": pending_messages(redis_client)}
        if state["run"] == "succeeded" and state["queued_emails"] == 0 and not any(state["messages"].values()):
            break
        if time.monotonic() - nudged > 10:
            broker.enqueue(message("relay_outbox", queue_name="emails", older_than_seconds=5))
            nudged = time.monotonic()
        time.sleep(0.5)
    else:
        pytest.fail(f"the run did not finish: {state}")

    # Then every due service is billed once, numbers are gap-free, nothing happened twice
    assert scalar(engine, "SELECT count(*) FROM billed_periods WHERE item_type = 'service'") == due_before
    numbers = [n for (n,) in rows(engine, "SELECT number FROM invoices WHERE number IS NOT NULL ORDER BY 1")]
    assert numbers and numbers == list(range(1, len(numbers) + 1))
    for duplicates in (
        "SELECT item_type, item_id, due_date FROM invoice_items WHERE item_type IN ('service','addon','domain',"
        "'billable') GROUP BY 1, 2, 3 HAVING count(*) > 1",
        "SELECT invoice_id FROM invoice_items WHERE item_type = 'late_fee' GROUP BY 1 HAVING count(*) > 1",
        "SELECT invoice_id FROM payment_captures WHERE status = 'succeeded' GROUP BY 1 HAVING count(*) > 1",
        "SELECT outbox_id FROM email_log GROUP BY 1 HAVING count(*) > 1",
    ):
        assert scalar(engine, f"SELECT count(*) FROM ({duplicates}) d") == 0, duplicates
    assert scalar(engine, "SELECT count(*) FROM daily_run_tasks WHERE status <> 'done'") == 0
    assert scalar(engine, "SELECT count(*) FROM job_failures") == 0
    assert scalar(engine, "SELECT count(*) FROM payment_captures WHERE status = 'succeeded'") > 0
    sent = scalar(engine, "SELECT count(*) FROM email_outbox WHERE status = 'sent'")
    assert sent > 0 and len(eml_files(mail_dir)) == sent
