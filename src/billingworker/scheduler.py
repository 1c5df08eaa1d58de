"""``billingworker scheduler``: fires the daily run at the configured local time, once per day.

Any number of schedulers may run (for availability): the daily run's unique index per day lets
exactly one of them start it. Each tick also resumes runs that stopped moving (a killed worker)
and re-offers emails a crash left in the outbox. A day missed while no scheduler ran is caught
up at the next tick: the latest scheduled run (today's once the run time has passed, else
yesterday's) is started if it does not exist.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from sqlalchemy import Engine, select

from .clock import Clock
from .db import unit_of_work
from .domain.models import DailyRun
from .domain.runs import daily_run as runs
from .domain.runs.daily_run import run_time, scheduled_day
from .domain.settings import load_settings

log = logging.getLogger(__name__)

#: Seconds between ticks.
TICK_SECONDS = 10
#: A running run that finished no batch and started no task for this long is resumed (seconds):
#: its messages were lost (a broker restart) or its worker died. A healthy run counts a batch
#: every second or two, and resuming one that was merely slow is harmless (a batch counts once).
STALL_SECONDS = 60
#: How often the outbox relays are sent (seconds); each drains everything due.
RELAY_EVERY_SECONDS = 60
#: The tick's log line counts the emails a relay re-offers up to this many ("10000+").
RELAY_COUNT_LIMIT = 10_000


@dataclass
class Scheduler:
    engine: Engine
    clock: Clock
    stall_seconds: int = STALL_SECONDS
    relay_every_seconds: int = RELAY_EVERY_SECONDS
    #: Emails still queued this long after they were written are relayed (None: the job's default).
    relay_after_seconds: int | None = None
    #: A ``sending`` claim older than this was left by a dead worker (EMAIL_CLAIM_TIMEOUT_SECONDS).
    claim_timeout: timedelta = timedelta(seconds=120)
    #: Called with the tick's time to record the queues' depth and throughput for the console's
    #: chart (``ops.samples.record_sample``; at most one sample a minute across all schedulers).
    sample: Callable[[datetime], object] | None = None
    _last_relay: datetime | None = field(default=None, init=False)

    def tick(self) -> list[str]:
        """One look at the clock and the database; returns what it decided, one phrase per
        decision (the day's run, stalled runs, the relays), for the log line and for tests."""
        from .actors import advance_daily_run, relay_outbox
        from .actors.services import relay_module_commands

        done: list[str] = []
        now = self.clock.now()
        relay_due = self._last_relay is None or (now - self._last_relay).total_seconds() >= self.relay_every_seconds
        emails_due = 0
        with unit_of_work(self.engine) as session:
            at = run_time(load_settings(session).daily_run_time)
            day = scheduled_day(now.astimezone(self.clock.zone), at)
            last = runs.last_run_date(session)
            # A brand-new installation starts with today's run, not with yesterday's.
            if last is None and day < self.clock.today():
                day = None
            run_id = runs.start_run(session, day, trigger="scheduler", now=now) if day and (
                last is None or last < day) else None
            existing = _run_of_day(session, day) if day and run_id is None else None
            stalled = runs.stalled_runs(session, now=now, after_seconds=self.stall_seconds)
            if relay_due:
                emails_due = self._emails_due(session, now)
            session.commit()
        if run_id is not None:
            advance_daily_run.send(run_id=run_id)
            done.append(f"started run #{run_id} for {day}")
        elif existing is not None:
            done.append(f"run #{existing[0]} for {day} already {_said(existing[1])}")
        elif day is None:
            done.append(f"no run yet: the first is due at {at:%H:%M}")
        for stuck in stalled:
            if stuck != run_id:
                advance_daily_run.send(run_id=stuck)
                done.append(f"resumed stalled run #{stuck}")
        if relay_due:
            # The outboxes: emails, and server-module commands, that a crash left queued.
            relay_outbox.send(older_than_seconds=self.relay_after_seconds)
            relay_module_commands.send()
            self._last_relay = now
            done.append("relayed outbox")
            if emails_due:
                done.append(f"{_emails(emails_due)} to deliver again")
        if self.sample is not None:
            try:
                self.sample(now)
            except Exception:  # noqa: BLE001 - a chart sample never stops the day's run
                log.warning("scheduler: the queue sample was not recorded", exc_info=True)
        return done

    def _emails_due(self, session, now: datetime) -> int:
        """How many emails the relay about to be sent will re-offer (counted, not marked), at
        most RELAY_COUNT_LIMIT: what the tick's log line says of the outbox."""
        from .actors.emails import RELAY_AFTER
        from .domain.messaging.delivery import pending_email_ids

        older_than = RELAY_AFTER if self.relay_after_seconds is None else timedelta(seconds=self.relay_after_seconds)
        return len(pending_email_ids(session, now=now, older_than=older_than, claim_timeout=self.claim_timeout,
                                     mark_relayed=False, limit=RELAY_COUNT_LIMIT))

    def run_forever(self, stop: threading.Event, tick_seconds: float = TICK_SECONDS) -> None:
        log.info("scheduler started (tick every %ss)", tick_seconds)
        while not stop.is_set():
            try:
                decisions = self.tick()
                # One line per tick, whatever it decided (an operator reads that it is alive).
                log.info("scheduler tick: %s", "; ".join(decisions) or "nothing to do",
                         extra={"decisions": decisions})
            except Exception:  # noqa: BLE001 - a scheduler must outlive a database restart
                log.exception("scheduler tick failed; trying again at the next tick")
            stop.wait(tick_seconds)


def _run_of_day(session, day: date) -> tuple[int, str] | None:
    """(id, status) of the day's real run, if it has one."""
    row = session.execute(select(DailyRun.id, DailyRun.status).where(
        DailyRun.run_date == day, DailyRun.dry_run.is_(False)).order_by(DailyRun.id).limit(1)).first()
    return (row[0], row[1]) if row is not None else None


def _said(status: str) -> str:
    return {"succeeded": "done", "running": "running", "failed": "failed"}.get(status, status)


def _emails(count: int) -> str:
    shown = f"{count}+" if count >= RELAY_COUNT_LIMIT else str(count)
    return f"{shown} email" if count == 1 else f"{shown} emails"
