"""The scheduler says at INFO, in one line per tick, what each tick decided: the day's run
fired or already there, stalled runs resumed, the relays and how many emails they re-offer."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
import redis

from billingworker import runtime as rt
from billingworker.actors import broker
from billingworker.clock import FixedClock
from billingworker.db import unit_of_work
from billingworker.domain.models import Client, OutboxEmail
from billingworker.domain.settings import save_settings
from billingworker.ops.samples import read_samples, record_sample
from billingworker.scheduler import Scheduler
from tests.redis_server import free_port, run_redis_url

NOW = datetime(2026, 1, 10, 9, 5, tzinfo=UTC)


@pytest.fixture
def clock(engine):
    clock = FixedClock(NOW)
    rt.configure(engine=engine, clock=clock)
    broker.flush_all()
    yield clock
    broker.flush_all()
    rt.reset()


class _Ticks(threading.Event):
    """A stop event that stops the loop after ``n`` ticks (the loop waits on it between ticks)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.left = n

    def wait(self, timeout: float | None = None) -> bool:
        self.left -= 1
        if self.left <= 0:
            self.set()
        return self.is_set()


def tick_lines(caplog, scheduler: Scheduler, ticks: int) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="billingworker.scheduler"):
        scheduler.run_forever(_Ticks(ticks), tick_seconds=0)
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("scheduler tick")]


def test_each_tick_logs_one_line_with_what_it_decided(engine, session, clock, caplog):
    # Given an installation whose run time has passed, and an email a lost message left queued
    save_settings(session, daily_run_time="09:00")
    client = Client(first_name="Ada", last_name="Lovelace", email="ada@example.com")
    session.add(client)
    session.flush()
    session.add(OutboxEmail(client_id=client.id, template="invoice_created", context="{}",
                            created_at=NOW - timedelta(minutes=5)))
    session.commit()
    scheduler = Scheduler(engine, clock, stall_seconds=600, relay_every_seconds=60)

    # When it ticks twice, ten seconds apart
    first = tick_lines(caplog, scheduler, 1)
    clock.set(NOW + timedelta(seconds=10))
    second = tick_lines(caplog, scheduler, 1)

    # Then one line per tick: the run fired and the relay, then the run already there
    assert first == ["scheduler tick: started run #1 for 2026-01-10; relayed outbox; 1 email to deliver again"]
    assert second == ["scheduler tick: run #1 for 2026-01-10 already running"]


def test_a_stalled_run_is_resumed_and_said(engine, session, clock, caplog):
    save_settings(session, daily_run_time="09:00")
    session.commit()
    scheduler = Scheduler(engine, clock, stall_seconds=60, relay_every_seconds=3600)
    tick_lines(caplog, scheduler, 1)

    clock.set(NOW + timedelta(minutes=2))
    lines = tick_lines(caplog, scheduler, 1)

    assert lines == ["scheduler tick: run #1 for 2026-01-10 already running; resumed stalled run #1"]


def test_a_new_installation_before_its_run_time_says_so(engine, clock, caplog):
    with unit_of_work(engine) as session:
        save_settings(session, daily_run_time="10:00")
        session.commit()
    scheduler = Scheduler(engine, clock, relay_every_seconds=3600)
    scheduler.tick()  # the first relay

    assert tick_lines(caplog, scheduler, 1) == ["scheduler tick: no run yet: the first is due at 10:00"]


def test_a_failing_tick_is_logged_and_the_loop_goes_on(engine, clock, caplog):
    scheduler = Scheduler(engine, clock)
    calls = []

    def broken() -> list[str]:
        calls.append(1)
        raise RuntimeError("database restarting")

    scheduler.tick = broken
    with caplog.at_level(logging.INFO, logger="billingworker.scheduler"):
        scheduler.run_forever(_Ticks(2), tick_seconds=0)

    assert len(calls) == 2
    assert [r.levelname for r in caplog.records if "tick failed" in r.getMessage()] == ["ERROR", "ERROR"]


# --- the queue samples of the console's chart ---------------------------------------------------

SAMPLES_REDIS_URL = run_redis_url(5)


@pytest.fixture
def samples_redis():
    client = redis.Redis.from_url(SAMPLES_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def test_the_scheduler_records_one_queue_sample_a_minute(engine, session, clock, samples_redis):
    # Given a scheduler that samples the test run's Redis, as `billingworker scheduler` does
    save_settings(session, daily_run_time="09:00")
    session.commit()
    scheduler = Scheduler(engine, clock, relay_every_seconds=3600,
                          sample=lambda now: record_sample(SAMPLES_REDIS_URL, now))

    # When it ticks every 10 s for a little over a minute
    for seconds in range(0, 70, 10):
        clock.set(NOW + timedelta(seconds=seconds))
        scheduler.tick()

    # Then one sample per minute of the clock, read back oldest first, each with both queues
    taken = read_samples(SAMPLES_REDIS_URL, NOW - timedelta(minutes=5))
    assert [s["at"] for s in taken] == [NOW.isoformat(), (NOW + timedelta(seconds=60)).isoformat()]
    assert set(taken[0]["queues"]) == {"billing", "emails"}


def test_a_sample_that_fails_never_stops_the_tick(engine, session, clock, caplog):
    # Given a Redis that does not answer (nothing listens on that port)
    save_settings(session, daily_run_time="09:00")
    session.commit()
    dead = f"redis://127.0.0.1:{free_port()}/0"
    scheduler = Scheduler(engine, clock, relay_every_seconds=3600, sample=lambda now: record_sample(dead, now))

    # When it ticks
    with caplog.at_level(logging.WARNING, logger="billingworker.scheduler"):
        decisions = scheduler.tick()

    # Then the day's run is still started, and the missed sample is said
    assert decisions == ["started run #1 for 2026-01-10", "relayed outbox"]
    assert "the queue sample was not recorded" in caplog.text
