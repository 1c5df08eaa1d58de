"""Redis restarted in the middle of a daily run: every queued message is lost with it.

The run must finish on its own (the scheduler sees it stalled and resumes it; a redelivered
batch re-sends its follow-ups; the relay drains the outbox), within a bound, with every email
sent once and nothing billed twice. The Redis server is the test's own, on a port of its own.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from bench.seed import seed
from dramatiq.brokers.redis import RedisBroker

from billingworker.db import session_factory
from billingworker.domain.settings import save_settings
from tests.redis_server import RedisServer

from .conftest import message, rows, run_state, scalar, start_scheduler, wait_for

pytestmark = pytest.mark.integration

#: Seconds the run may take, from the restart to its success with every email out.
RECOVERY_BOUND = 150


@pytest.fixture
def own_redis() -> RedisServer:
    server = RedisServer.start()
    yield server
    server.close()


def test_a_redis_restart_mid_run_recovers_in_seconds(start_worker, pg_engine, pg_url, own_redis, smtp_sink,
                                                     tmp_path):
    sink, mail_url = smtp_sink
    sink.delay = 0.002
    today = datetime.now(UTC).date()
    # Given 800 clients with 2,400 services, the run time passed (so the scheduler starts nothing
    # of its own), a worker and a scheduler on a Redis of the test's own
    seed(pg_engine, clients=800, services=2400, as_of=today, progress=False)
    with session_factory(pg_engine)() as s:
        save_settings(s, daily_run_time="00:00", late_fee_days=3, late_fee_amount="5.00", late_fee_type="fixed")
        s.commit()
    env = {"BROKER_URL": own_redis.url(), "MAIL_URL": mail_url, "FAN_OUT_BATCH_SIZE": "50",
           "BROKER_HEARTBEAT_TIMEOUT_MS": "3000", "BROKER_MAINTENANCE_CHANCE": "1000000",
           "EMAIL_CLAIM_TIMEOUT_SECONDS": "10", "dramatiq_restart_delay": "500"}
    start_worker(threads=4, env=env)
    scheduler = start_scheduler(tmp_path, {**env, "DATABASE_URL": pg_url, "BILLING_TIME_ZONE": "UTC"})
    try:
        sender = RedisBroker(url=own_redis.url())
        sender.enqueue(message("run_daily_automation", as_of=today.isoformat()))
        sender.close()

        # When Redis restarts (losing every message) while the run is under way
        wait_for(lambda: scalar(pg_engine, "SELECT count(*) FROM daily_run_batches") >= 8, "8 batches done", 60)
        own_redis.restart()
        restarted = time.monotonic()

        # Then the run succeeds and every email is out, within the bound
        def finished() -> bool:
            return scalar(pg_engine, "SELECT status FROM daily_runs") == "succeeded" and not scalar(
                pg_engine, "SELECT count(*) FROM email_outbox WHERE status NOT IN ('sent', 'skipped')")

        deadline = restarted + RECOVERY_BOUND
        while not finished():
            if time.monotonic() > deadline:
                pytest.fail(f"not finished {RECOVERY_BOUND} s after the restart: {run_state(pg_engine)}\n"
                            f"scheduler:\n{(tmp_path / 'scheduler.log').read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
        took = time.monotonic() - restarted
    finally:
        scheduler.terminate()
        scheduler.wait(15)
    sent = scalar(pg_engine, "SELECT count(*) FROM email_outbox WHERE status = 'sent'")
    print(f"\nredis restart: run succeeded and {sent} emails out {took:.1f} s after the restart; "
          f"{sink.duplicates()} received twice")
    assert len(sink.counts()) == sent and sink.duplicates() == 0, "every email sent once"
    assert scalar(pg_engine, "SELECT count(*) FROM email_log") == sent
    # ...and the books hold: nothing billed, fined or reminded twice, every task done
    assert scalar(pg_engine, "SELECT count(*) FROM (SELECT item_type, item_id, due_date FROM invoice_items"
                             " WHERE item_type IN ('service','addon','domain','billable')"
                             " GROUP BY 1, 2, 3 HAVING count(*) > 1) d") == 0
    numbers = [n for (n,) in rows(pg_engine, "SELECT number FROM invoices WHERE number IS NOT NULL ORDER BY 1")]
    assert numbers == list(range(1, len(numbers) + 1)), "gap-free, no repeats"
    assert scalar(pg_engine, "SELECT count(*) FROM daily_run_tasks WHERE batches_done <> batches_total") == 0
