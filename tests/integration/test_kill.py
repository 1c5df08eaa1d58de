"""A real worker killed with SIGKILL in the middle of a daily run over a few thousand clients.

After a new worker starts (and the scheduler's periodic nudges, sent here by hand), the run
completes, and a reconciliation of the books finds nothing billed, fined, reminded or charged
twice and nothing missing.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import date

import pytest
from bench.seed import seed
from sqlalchemy import text

from billingworker.db import session_factory
from billingworker.domain.settings import save_settings
from tests import factories as f

from .conftest import eml_files, message, pending_messages, rows, scalar, wait_for
from .server_databases import (  # noqa: F401 - fixtures: the test runs on each server database
    on_each_server_database,
    server_database_engine,
    server_database_url,
)

pytestmark = pytest.mark.integration

DAY = date(2026, 1, 15)
#: Quick redelivery of a dead worker's messages (Dramatiq's defaults: 60 s; maintenance on 1,000
#: broker calls in a million).
FAST_RECOVERY = {"FAN_OUT_BATCH_SIZE": "100", "BROKER_HEARTBEAT_TIMEOUT_MS": "3000",
                 "BROKER_MAINTENANCE_CHANCE": "1000000"}


def test_a_worker_killed_mid_run_leaves_nothing_double_and_nothing_missing(
        start_worker, broker, pg_engine, redis_client, mail_dir):
    # Given 2,000 clients with 6,000 services spread around the day, late fees on, some cards
    seed(pg_engine, clients=2000, services=6000, as_of=DAY, progress=False)
    s = session_factory(pg_engine)()
    save_settings(s, late_fee_days=3, late_fee_amount="5.00", late_fee_type="fixed")
    s.execute(text("UPDATE clients SET auto_cc_processing = true WHERE id % 10 = 0"))
    for client_id in range(10, 2001, 10):
        f.card(s, _client(s, client_id),
               gateway_token="tok_4242424242424242" if client_id % 40 else "tok_4000000000000002",
               card_last_four="4242" if client_id % 40 else "0002")
    s.commit()
    s.close()
    due_before = scalar(pg_engine, "SELECT count(*) FROM services WHERE status IN ('Active','Pending','Suspended')"
                        " AND billing_cycle NOT IN ('Free','One Time') AND next_due_date <= :d"
                        " AND NOT EXISTS (SELECT 1 FROM cancel_requests c WHERE c.service_id = services.id)",
                        d=date(2026, 1, 29))

    # When the day's run starts and its worker is killed once it is well under way
    first = start_worker(threads=8, env=FAST_RECOVERY)
    broker.enqueue(message("run_daily_automation", as_of=DAY.isoformat()))
    wait_for(lambda: scalar(pg_engine, "SELECT count(*) FROM daily_run_batches") >= 4, "a few batches done", 60)
    os.killpg(first.pid, signal.SIGKILL)
    first.proc.wait()
    assert scalar(pg_engine, "SELECT status FROM daily_runs") == "running", "killed mid-run"

    # Then a new worker finishes it (with the scheduler's nudges: resume the run, relay the outbox)
    start_worker(threads=8, env=FAST_RECOVERY)
    run_id = scalar(pg_engine, "SELECT id FROM daily_runs")
    deadline, nudged, state = time.monotonic() + 180, 0.0, {}
    while time.monotonic() < deadline:
        state = {"run": scalar(pg_engine, "SELECT status FROM daily_runs"),
                 "queued_emails": scalar(pg_engine, "SELECT count(*) FROM email_outbox"
                                                    " WHERE status IN ('queued', 'sending')"),
                 "messages": pending_messages(redis_client)}
        if state["run"] == "succeeded" and state["queued_emails"] == 0 and not any(state["messages"].values()):
            break
        if time.monotonic() - nudged > 10:
            broker.enqueue(message("advance_daily_run", run_id=run_id))
            broker.enqueue(message("relay_outbox", queue_name="emails", older_than_seconds=5))
            nudged = time.monotonic()
        time.sleep(0.5)
    else:
        pytest.fail(f"the run did not finish after the kill: {state}")
    assert scalar(pg_engine, "SELECT status FROM daily_runs") == "succeeded"

    # Reconciliation: nothing twice...
    assert scalar(pg_engine, "SELECT count(*) FROM (SELECT item_type, item_id, due_date FROM invoice_items"
                             " WHERE item_type IN ('service','addon','domain','billable')"
                             " GROUP BY 1, 2, 3 HAVING count(*) > 1) d") == 0
    numbers = [n for (n,) in rows(pg_engine, "SELECT number FROM invoices WHERE number IS NOT NULL ORDER BY 1")]
    assert numbers == list(range(1, len(numbers) + 1)), "gap-free, no repeats"
    assert scalar(pg_engine, "SELECT count(*) FROM (SELECT invoice_id FROM invoice_items WHERE item_type = 'late_fee'"
                             " GROUP BY 1 HAVING count(*) > 1) d") == 0
    assert scalar(pg_engine, "SELECT count(*) FROM (SELECT invoice_id FROM payment_captures"
                             " WHERE status = 'succeeded' GROUP BY 1 HAVING count(*) > 1) d") == 0
    assert scalar(pg_engine, "SELECT count(*) FROM (SELECT invoice_id FROM transactions"
                             " GROUP BY 1 HAVING count(*) > 1) d") == 0
    assert scalar(pg_engine, "SELECT count(*) FROM (SELECT outbox_id FROM email_log GROUP BY 1"
                             " HAVING count(*) > 1) d") == 0
    # ...and nothing missing
    billed = scalar(pg_engine, "SELECT count(*) FROM billed_periods WHERE item_type = 'service'")
    assert billed == due_before, "every due service billed once"
    assert scalar(pg_engine, "SELECT count(*) FROM daily_run_tasks WHERE status <> 'done'") == 0
    assert scalar(pg_engine, "SELECT count(*) FROM daily_run_tasks WHERE batches_done <> batches_total") == 0
    assert scalar(pg_engine, "SELECT count(*) FROM email_outbox WHERE status NOT IN ('sent', 'skipped')") == 0
    sent = scalar(pg_engine, "SELECT count(*) FROM email_outbox WHERE status = 'sent'")
    assert len(eml_files(mail_dir)) == sent
    assert scalar(pg_engine, "SELECT count(*) FROM payment_captures WHERE status = 'pending'") == 0
    assert scalar(pg_engine, "SELECT count(*) FROM invoice_items WHERE item_type = 'late_fee'") == \
        scalar(pg_engine, "SELECT count(*) FROM invoice_late_fees")


def _client(session, client_id):
    from billingworker.domain.models import Client

    return session.get(Client, client_id)
