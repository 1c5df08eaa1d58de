"""The composition root: importing the jobs builds nothing; ``bootstrap(Config)`` builds the
broker and runtime of a process; the worker starts from ``billingworker.worker``."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

from dramatiq.brokers.stub import StubBroker

from billingworker import bootstrap as bootstrap_module
from billingworker.actors.binding import bind_jobs
from billingworker.bootstrap import bootstrap, bootstrap_in_process, current_app
from billingworker.broker import make_broker
from billingworker.config import get_config
from billingworker.runtime import install

DRAMATIQ = Path(sys.executable).with_name("dramatiq")


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_importing_the_jobs_builds_no_broker_and_reads_no_broker_url():
    # Given a BROKER_URL no broker could be built from
    # When a process imports every job and looks at Dramatiq's broker
    done = _python("import dramatiq, billingworker.actors as a; "
                   "from billingworker.actors.binding import UnboundBroker; "
                   "print(type(dramatiq.get_broker()).__name__, a.generate_due_invoices.broker is a.binding.UNBOUND)",
                   BROKER_URL="nonsense://nowhere")
    # Then it imported, and the jobs wait, unbound, for the bootstrap
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["UnboundBroker", "True"]


def test_a_job_sent_before_the_bootstrap_is_refused_with_the_fix():
    done = _python("import billingworker.actors as a; a.generate_due_invoices.send()")
    assert done.returncode != 0
    assert "NotBootstrapped" in done.stderr and "bootstrap()" in done.stderr


def test_bootstrap_binds_every_job_to_the_broker_of_its_config():
    # Given the App of this test process (an in-process broker), kept to be put back
    before = current_app()
    try:
        # When the process bootstraps again from a config
        app = bootstrap(replace(get_config(), broker_url="stub://", fan_out_batch_size=7))
        # Then every job is bound to the new broker, which knows them all, and the runtime follows the config
        from billingworker.actors import broker, deliver_email, generate_due_invoices

        assert broker is app.broker and isinstance(app.broker, StubBroker) and app.broker is not before.broker
        assert generate_due_invoices.broker is app.broker and deliver_email.broker is app.broker
        assert {"generate_due_invoices", "deliver_email", "run_daily_automation"} <= app.broker.get_declared_actors()
        assert app.runtime.batch_size == 7
        # And a command that runs the jobs itself keeps an in-process broker it already has
        assert bootstrap_in_process() is app
    finally:
        # The other tests hold the first broker: bind the jobs back to it
        bind_jobs(before.broker)
        install(before.runtime)
        bootstrap_module._app = before


def test_the_old_worker_command_stops_at_once_and_names_the_new_one():
    # Given a worker started on the jobs alone (the command before the bootstrap)
    done = subprocess.run([str(DRAMATIQ), "billingworker.actors", "--processes", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "BROKER_URL": "redis://127.0.0.1:1/0"})
    # Then it exits with an error that says which command to run instead of consuming nothing
    assert done.returncode != 0
    assert "dramatiq billingworker.worker" in done.stdout + done.stderr


def test_a_rabbitmq_broker_waits_for_rabbitmq_to_confirm_each_send():
    # Without publisher confirms a message sent just before RabbitMQ goes down is lost unseen.
    broker = make_broker("amqp://guest:guest@127.0.0.1:5672/%2F")
    try:
        assert broker.confirm_delivery is True
    finally:
        broker.close()
