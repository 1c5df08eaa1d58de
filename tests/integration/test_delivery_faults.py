"""Email delivery under worker kills, counted by a real SMTP server (aiosmtpd) per Message-ID.

The guarantee (docs/jobs.md#deliver_emails): a worker killed during delivery repeats at most the
emails in flight at that instant (one per worker thread), never a batch; every email is sent.
Run on Redis and on RabbitMQ.
"""

from __future__ import annotations

import os
import signal
import time
from datetime import date

import pytest
from bench.seed import seed
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.brokers.redis import RedisBroker

from billingworker.db import session_factory
from billingworker.domain.billing.due_invoices import client_batches, generate_for_clients

from .conftest import REDIS_URL, message, scalar, wait_for
from .server_databases import (  # noqa: F401 - fixtures: the test runs on each server database
    on_each_server_database,
    server_database_engine,
    server_database_url,
)

pytestmark = pytest.mark.integration

DAY = date(2026, 1, 15)
THREADS = 4
KILLS = 3
#: Quick take-over of a dead worker's messages (Redis) and of the claims it left (both brokers).
FAST_RECOVERY = {"BROKER_HEARTBEAT_TIMEOUT_MS": "3000", "BROKER_MAINTENANCE_CHANCE": "1000000",
                 "EMAIL_CLAIM_TIMEOUT_SECONDS": "6"}


def queue_invoice_emails(engine, clients: int) -> list[int]:
    """Seed clients with due services and invoice them in process: one queued email per invoice."""
    seed(engine, clients=clients, services=clients * 3, as_of=DAY, progress=False)
    email_ids: list[int] = []
    with session_factory(engine)() as session:
        for ids in client_batches(session, 200):
            email_ids += generate_for_clients(session, ids, DAY).email_ids
        session.commit()
    return email_ids


@pytest.mark.parametrize("broker_kind", ["redis", "rabbitmq"])
def test_killed_workers_repeat_at_most_the_emails_in_flight(
        broker_kind, request, start_worker, pg_engine, redis_client, smtp_sink):
    sink, mail_url = smtp_sink
    sink.delay = 0.004  # a mail server of 4 ms a message: kills land in the middle of batches
    url = request.getfixturevalue("rabbitmq_url") if broker_kind == "rabbitmq" else REDIS_URL
    sender = RabbitmqBroker(url=url) if broker_kind == "rabbitmq" else RedisBroker(url=url)
    sender.declare_queue("emails")
    env = {**FAST_RECOVERY, "BROKER_URL": url, "MAIL_URL": mail_url}

    # Given about 1,200 queued invoice emails, handed to the workers in batches of 100
    email_ids = queue_invoice_emails(pg_engine, clients=700)
    assert len(email_ids) > 1000
    for start in range(0, len(email_ids), 100):
        sender.enqueue(message("deliver_emails", queue_name="emails", email_ids=email_ids[start:start + 100]))

    # When the worker is SIGKILLed three times while it delivers, a new one started each time
    for kill in range(KILLS):
        worker = start_worker(threads=THREADS, env=env)
        goal = len(set(sink.received)) + 150
        wait_for(lambda goal=goal: len(set(sink.received)) >= goal, f"150 more emails before kill {kill + 1}", 60)
        os.killpg(worker.pid, signal.SIGKILL)
        worker.proc.wait()

    # Then a last worker and the relay (as the scheduler sends it) deliver every email
    start_worker(threads=THREADS, env=env)
    deadline, relayed = time.monotonic() + 120, 0.0
    while scalar(pg_engine, "SELECT count(*) FROM email_outbox WHERE status <> 'sent'"):
        assert time.monotonic() < deadline, "every email delivered after the kills"
        if time.monotonic() - relayed > 3:
            sender.enqueue(message("relay_outbox", queue_name="emails", older_than_seconds=2))
            relayed = time.monotonic()
        time.sleep(0.2)
    sender.close()

    # Every email reached the server, and a kill repeated at most the emails then in flight
    counts = sink.counts()
    assert len(counts) == len(email_ids)
    duplicates = sink.duplicates()
    print(f"\n{broker_kind}: {len(email_ids)} emails, {KILLS} kills of {THREADS} threads: "
          f"{duplicates} received twice")
    assert duplicates <= KILLS * THREADS, f"{duplicates} duplicates after {KILLS} kills"
    assert scalar(pg_engine, "SELECT count(*) FROM email_log") == len(email_ids)
