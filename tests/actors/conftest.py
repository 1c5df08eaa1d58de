"""Actors run in a real Dramatiq worker (threads) over the in-process broker, against the
``engine`` database; emails go to the in-memory mailer twin."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dramatiq import Worker
from sqlalchemy import func, select

from billingworker import runtime as rt
from billingworker.actors import broker
from billingworker.adapters.mailer import MemoryMailer
from billingworker.clock import FixedClock

NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


@pytest.fixture
def mailer() -> MemoryMailer:
    return MemoryMailer()


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def worker(engine, clock, mailer):
    rt.configure(engine=engine, clock=clock, mailer=mailer, mail_from="Billing <billing@example.com>",
                 batch_size=2)
    broker.flush_all()
    w = Worker(broker, worker_timeout=50, worker_threads=2)
    w.start()
    yield w
    # Nothing of this test may still run when the next one wipes the database: what waits in the
    # queues (a failed test's retries, delayed by their backoff) is dropped, what runs finishes
    # (stop waits for it), and what that queues on its way out (a retry) is dropped too. Never a
    # join here: a retry re-queued after the test's monkeypatch was undone waits out the actor's
    # real backoff, minutes, and the join with it.
    broker.flush_all()
    for reader in _readers:  # a test's session must not hold SQLite's writer lock while work finishes
        reader.rollback()
    w.stop()
    _forget_unacked()
    rt.reset()


def _forget_unacked() -> None:
    """Empty every stub queue, and forget the messages taken from them and never acked: a stopped
    worker's delayed retries (held in its memory until due; the stub broker cannot requeue them)
    would otherwise count as unfinished forever, and the next test's join wait for them."""
    broker.flush_all()
    for queue in broker.queues.values():
        with queue.all_tasks_done:
            queue.queue.clear()
            queue.unfinished_tasks = 0
            queue.all_tasks_done.notify_all()


_readers: list = []


@pytest.fixture(autouse=True)
def _release_reader(request):
    """The test's own session must not hold SQLite's writer lock while workers run."""
    if "session" in request.fixturenames:
        _readers.append(request.getfixturevalue("session"))
    yield
    _readers.clear()


def drain(fail_fast: bool = False) -> None:
    """Wait until every queue (and the emails its jobs queue) is empty."""
    for reader in _readers:
        reader.rollback()
    for _ in range(3):
        for queue in ("billing", "emails"):
            broker.join(queue, fail_fast=fail_fast)


def dead_letters():
    return list(broker.dead_letters)


def hold_messages(monkeypatch, actor_name: str) -> list[dict]:
    """Keep back every message for ``actor_name`` (as a lost message would be) from now on,
    whoever sends it (``.send`` or a unit of work's commit): the list receives their kwargs."""
    held: list[dict] = []
    real_enqueue = broker.enqueue

    def enqueue(message, *, delay=None):
        if message.actor_name == actor_name:
            held.append(dict(message.kwargs))
            return message
        return real_enqueue(message, delay=delay)

    monkeypatch.setattr(broker, "enqueue", enqueue)
    return held


@pytest.fixture
def exports_dir(worker, tmp_path):
    """Export files of the test's own, for the client jobs (export, delete, anonymise)."""
    rt.configure(exports_dir=tmp_path / "exports")
    return tmp_path / "exports"


def count(session, model, *where) -> int:
    return session.scalar(select(func.count()).select_from(model).where(*where))


def twice(message) -> None:
    """The broker delivers the very same message again (at-least-once)."""
    drain()
    broker.enqueue(message)
    drain()
