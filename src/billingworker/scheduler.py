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
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from sqlalchemy import Engine

from .clock import Clock
from .db import unit_of_work
from .domain import daily_run as runs
from .domain.errors import ValidationError
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


def run_time(text: str) -> time:
    try:
        hours, minutes = text.split(":")
        return time(int(hours), int(minutes))
    except ValueError:
        raise ValidationError("settings.daily_run_time", text, "must be HH:MM (24-hour, local time)") from None


def scheduled_day(now_local: datetime, at: time) -> date:
    """The day whose run should exist by ``now_local``: today once its run time has passed."""
    return now_local.date() if now_local.time() >= at else now_local.date() - timedelta(days=1)


@dataclass
class Scheduler:
    engine: Engine
    clock: Clock
    stall_seconds: int = STALL_SECONDS
    relay_every_seconds: int = RELAY_EVERY_SECONDS
    #: Emails still queued this long after they were written are relayed (None: the job's default).
    relay_after_seconds: int | None = None
    _last_relay: datetime | None = field(default=None, init=False)

    def tick(self) -> list[str]:
        """One look at the clock and the database; returns what it did (for logs and tests)."""
        from .actors import advance_daily_run, relay_outbox
        from .actors.services import relay_module_commands

        done: list[str] = []
        now = self.clock.now()
        with unit_of_work(self.engine) as session:
            at = run_time(load_settings(session).daily_run_time)
            day = scheduled_day(now.astimezone(self.clock.zone), at)
            last = runs.last_run_date(session)
            # A brand-new installation starts with today's run, not with yesterday's.
            if last is None and day < self.clock.today():
                day = None
            run_id = runs.start_run(session, day, trigger="scheduler", now=now) if day and (
                last is None or last < day) else None
            stalled = runs.stalled_runs(session, now=now, after_seconds=self.stall_seconds)
            session.commit()
        if run_id is not None:
            advance_daily_run.send(run_id=run_id)
            done.append(f"started run {run_id} for {day}")
        for stuck in stalled:
            if stuck != run_id:
                advance_daily_run.send(run_id=stuck)
                done.append(f"resumed run {stuck}")
        if self._last_relay is None or (now - self._last_relay).total_seconds() >= self.relay_every_seconds:
            # The outboxes: emails, and server-module commands, that a crash left queued.
            relay_outbox.send(older_than_seconds=self.relay_after_seconds)
            relay_module_commands.send()
            self._last_relay = now
            done.append("relayed outbox")
        return done

    def run_forever(self, stop: threading.Event, tick_seconds: float = TICK_SECONDS) -> None:
        log.info("scheduler started (tick every %ss)", tick_seconds)
        while not stop.is_set():
            try:
                for line in self.tick():
                    log.info("scheduler: %s", line)
            except Exception:  # noqa: BLE001 - a scheduler must outlive a database restart
                log.exception("scheduler tick failed; trying again at the next tick")
            stop.wait(tick_seconds)
