"""The database crashes in the middle of a daily run, on PostgreSQL and on MariaDB.

A real worker (four threads) and the scheduler run the day against a database server of the
test's own; once the run is well under way the server is stopped the way a crash stops it
(PostgreSQL: ``pg_ctl -m immediate``; MariaDB: SIGKILL, InnoDB's crash recovery at the next
start), left down for a few seconds, and started again. docs/jobs.md promises that a database
restart is a transient error: retried, never a failed client. So the run must finish on its own,
with nothing billed, fined, charged or numbered twice, nothing missing, no job failure recorded,
the books clean by ``billingworker reconcile``, and no email repeated beyond those in flight (one
per worker thread) and, on PostgreSQL, those whose sent marks the crash lost (docs/jobs.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from bench.seed import seed
from sqlalchemy import Engine, text

from billingworker.db import create_db_engine, session_factory
from billingworker.domain.models import Client
from billingworker.domain.settings import save_settings
from tests import factories as f
from tests.conftest import _migrated
from tests.db_server import MariaDBServer, PostgresServer

from .conftest import REDIS_URL, message, rows, run_state, scalar, start_scheduler, wait_for

pytestmark = pytest.mark.integration

THREADS = 4
#: Seconds the server stays down (a worker's first retries, 1 s and 2 s, fail against it).
DOWN_SECONDS = 4
#: Seconds the run may take, from the server's return to its success with every email out.
RECOVERY_BOUND = 180
SERVERS = {"postgresql": PostgresServer, "mariadb": MariaDBServer}


@pytest.fixture(params=sorted(SERVERS))
def own_database(request) -> Iterator[PostgresServer | MariaDBServer]:
    try:
        server = SERVERS[request.param].create()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        _migrated(server.url())
        yield server
    finally:
        server.close()


@pytest.fixture
def pg_url(own_database) -> str:
    """The workers of ``start_worker`` get this database: the test's own server."""
    return own_database.url()


@pytest.fixture
def pg_engine(own_database) -> Iterator[Engine]:
    engine = create_db_engine(own_database.url())
    yield engine
    engine.dispose()


def test_a_database_crash_mid_run_is_ridden_out(own_database, start_worker, pg_engine, pg_url, redis_client,
                                                  broker, smtp_sink, tmp_path):
    engine = pg_engine
    sink, mail_url = smtp_sink
    sink.delay = 0.002
    today = datetime.now(UTC).date()
    # Given 600 clients with 1,800 services around the day, late fees on, one client in ten
    # paying by card, the run time passed (the scheduler starts nothing of its own)
    seed(engine, clients=600, services=1800, as_of=today, progress=False)
    with session_factory(engine)() as s:
        save_settings(s, daily_run_time="00:00", late_fee_days=3, late_fee_amount="5.00", late_fee_type="fixed")
        s.execute(text("UPDATE clients SET auto_cc_processing = true WHERE id % 10 = 0"))
        for client_id in range(10, 601, 10):
            f.card(s, s.get(Client, client_id))
        s.commit()
    due_before = scalar(engine, "SELECT count(*) FROM services WHERE status IN ('Active','Pending','Suspended')"
                        " AND billing_cycle NOT IN ('Free','One Time') AND next_due_date <= :d"
                        " AND NOT EXISTS (SELECT 1 FROM cancel_requests c WHERE c.service_id = services.id)",
                        d=today.fromordinal(today.toordinal() + 14))
    env = {"MAIL_URL": mail_url, "FAN_OUT_BATCH_SIZE": "25", "EMAIL_CLAIM_TIMEOUT_SECONDS": "10"}
    worker = start_worker(threads=THREADS, env=env)
    scheduler = start_scheduler(tmp_path, {**env, "DATABASE_URL": pg_url, "BROKER_URL": REDIS_URL,
                                           "BILLING_TIME_ZONE": "UTC"})
    try:
        broker.enqueue(message("run_daily_automation", as_of=today.isoformat()))

        # When the database crashes while the run is under way, and comes back a few seconds later
        wait_for(lambda: scalar(engine, "SELECT count(*) FROM daily_run_batches") >= 6 and len(sink.received) >= 100,
                 "6 batches done and emails going out", 90)
        # (PostgreSQL commits the sent marks without waiting for the disk: a crash may lose the
        # marks of its last fraction of a second, and those emails go again. Count what came in
        # the last second before the crash: the most a lost-marks repeat can be.)
        received_before = len(sink.received)
        time.sleep(1)
        last_second = len(sink.received) - received_before
        own_database.crash()
        engine.dispose()
        time.sleep(DOWN_SECONDS)
        own_database.start()
        back = time.monotonic()

        # Then the run succeeds and every email is out, within the bound
        def finished() -> bool:
            return scalar(engine, "SELECT status FROM daily_runs") == "succeeded" and not scalar(
                engine, "SELECT count(*) FROM email_outbox WHERE status NOT IN ('sent', 'skipped')")

        while not finished():
            if time.monotonic() > back + RECOVERY_BOUND:
                pytest.fail(f"not finished {RECOVERY_BOUND} s after the database came back: {run_state(engine)}\n"
                            f"scheduler:\n{(tmp_path / 'scheduler.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.3)
        took = time.monotonic() - back
    finally:
        scheduler.terminate()
        scheduler.wait(15)

    failed_attempts = worker.log().count("failed: OperationalError")
    sent = scalar(engine, "SELECT count(*) FROM email_outbox WHERE status = 'sent'")
    print(f"\n{failed_attempts} job attempts failed on the crash and were retried")
    print(f"\n{own_database.__class__.__name__} crash: run succeeded and {sent} emails out {took:.1f} s after the "
          f"server came back; {sink.duplicates()} received twice ({last_second} received in the second before "
          "the crash)")
    assert failed_attempts, "the crash hit jobs in flight (else this test proves nothing)"
    # ...with no failed client: a crash is transient
    assert rows(engine, "SELECT actor, error, reason FROM job_failures") == []
    # ...nothing twice, nothing missing
    assert scalar(engine, "SELECT count(*) FROM billed_periods WHERE item_type = 'service'") == due_before
    assert scalar(engine, "SELECT count(*) FROM (SELECT item_type, item_id, due_date FROM invoice_items"
                          " WHERE item_type IN ('service','addon','domain','billable')"
                          " GROUP BY item_type, item_id, due_date HAVING count(*) > 1) d") == 0
    numbers = [n for (n,) in rows(engine, "SELECT number FROM invoices WHERE number IS NOT NULL ORDER BY number")]
    assert numbers and numbers == list(range(1, len(numbers) + 1)), "gap-free, no repeats"
    for once_per_invoice in ("SELECT invoice_id FROM invoice_items WHERE item_type = 'late_fee'",
                             "SELECT invoice_id FROM payment_captures WHERE status = 'succeeded'",
                             "SELECT invoice_id FROM transactions"):
        assert scalar(engine, f"SELECT count(*) FROM ({once_per_invoice} GROUP BY invoice_id"
                              " HAVING count(*) > 1) d") == 0, once_per_invoice
    assert scalar(engine, "SELECT count(*) FROM payment_captures WHERE status = 'pending'") == 0
    assert scalar(engine, "SELECT count(*) FROM daily_run_tasks WHERE batches_done <> batches_total") == 0
    # ...the books clean, as an operator would check them
    reconciled = subprocess.run([os.path.join(os.path.dirname(sys.executable), "billingworker"), "reconcile",
                                 "--as-of", today.isoformat(), "--json"],
                                env={**os.environ, "DATABASE_URL": pg_url, "BILLING_TIME_ZONE": "UTC"},
                                capture_output=True, text=True, timeout=120)
    assert reconciled.returncode == 0, reconciled.stdout[-3000:] + reconciled.stderr[-3000:]
    # ...and every email received, none more than once beyond what was in flight at the crash
    assert len(sink.counts()) == sent
    assert scalar(engine, "SELECT count(*) FROM email_log") == sent
    # (MariaDB: a mark is committed durably before the next email goes, so only the emails in
    # flight, one per thread; PostgreSQL: also the marks of the last moment, see above)
    bound = THREADS + (last_second if isinstance(own_database, PostgresServer) else 0)
    assert sink.duplicates() <= bound, f"at most {bound} repeats"
