"""Time zones and daylight saving (issue 12): the real scheduler tick, driven by an injected
clock stepping through DST transitions of the installation's time zone.

- a ``daily_run_time`` inside the hour that spring forward skips fires once that day, as soon
  as the local clock is past it (03:00 for 02:30);
- a ``daily_run_time`` inside the hour that fall back repeats fires once, at its first pass;
- "today" (the run's day, the due dates' day) is the installation's calendar day at every hour,
  also while the UTC date is another one;
- a replay of a past day (``run_daily_automation(as_of=...)``, what ``daily-run --as-of`` sends)
  on the book as it was makes the invoices that day's run made.

The expected instants are written out by hand (UTC) below, not computed with zoneinfo, so that
the tests do not repeat the code they check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from dramatiq import Worker
from sqlalchemy import delete, select

from billingworker import runtime as rt
from billingworker.actors import broker, run_daily_automation
from billingworker.adapters.mailer import MemoryMailer
from billingworker.clock import FixedClock
from billingworker.domain.models import Base, Client, DailyRun, Invoice, InvoiceItem, Setting
from billingworker.domain.runs.daily_run import run_moment, run_time, scheduled_day
from billingworker.domain.settings import save_settings
from billingworker.scheduler import Scheduler
from tests import factories as f


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@dataclass(frozen=True)
class Transition:
    zone: str
    day: date
    #: The local day's first and last instants' bounds, in UTC: [starts, ends).
    starts: datetime
    ends: datetime
    run_time: str
    #: When the scheduler must fire that day's run: the first tick at or after this instant.
    fires_at: datetime


SPRING_FORWARD = [
    # 02:00 EST -> 03:00 EDT: 02:30 never happens; the day is 23 hours long.
    Transition("America/New_York", date(2026, 3, 8), utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), "02:30",
               utc(2026, 3, 8, 7)),
    # 01:00 GMT -> 02:00 BST.
    Transition("Europe/London", date(2026, 3, 29), utc(2026, 3, 29, 0), utc(2026, 3, 29, 23), "01:30",
               utc(2026, 3, 29, 1)),
    # 02:00 AEST -> 03:00 AEDT: the run fires on the 3rd in UTC.
    Transition("Australia/Sydney", date(2026, 10, 4), utc(2026, 10, 3, 14), utc(2026, 10, 4, 13), "02:30",
               utc(2026, 10, 3, 16)),
]
FALL_BACK = [
    # 02:00 EDT -> 01:00 EST: 01:30 happens twice (05:30 and 06:30 UTC); the day is 25 hours long.
    Transition("America/New_York", date(2026, 11, 1), utc(2026, 11, 1, 4), utc(2026, 11, 2, 5), "01:30",
               utc(2026, 11, 1, 5, 30)),
    # 02:00 BST -> 01:00 GMT: 01:30 at 00:30 and 01:30 UTC.
    Transition("Europe/London", date(2026, 10, 25), utc(2026, 10, 24, 23), utc(2026, 10, 26, 0), "01:30",
               utc(2026, 10, 25, 0, 30)),
    # 03:00 AEDT -> 02:00 AEST: 02:30 at 15:30 and 16:30 UTC on the 4th.
    Transition("Australia/Sydney", date(2026, 4, 5), utc(2026, 4, 4, 13), utc(2026, 4, 5, 14), "02:30",
               utc(2026, 4, 4, 15, 30)),
]
#: No daylight saving, but half an hour off UTC: 00:15 IST is 18:45 UTC the day before.
KOLKATA = Transition("Asia/Kolkata", date(2026, 3, 8), utc(2026, 3, 7, 18, 30), utc(2026, 3, 8, 18, 30), "00:15",
                     utc(2026, 3, 7, 18, 45))


def ids(t: Transition) -> str:
    return f"{t.zone}-{t.day}"


@pytest.fixture
def installation(engine) -> Iterator[Scheduler]:
    """The runtime on the test's database, the in-process broker empty, no worker: the runs the
    scheduler starts wait in the broker (flushed afterwards)."""
    rt.configure(engine=engine, clock=FixedClock(utc(2026, 1, 1)), batch_size=10)
    broker.flush_all()
    yield
    broker.flush_all()
    rt.reset()


def yesterday_ran(session, day: date) -> None:
    """An installation in service: the day before has its run (a new one starts with today's)."""
    session.add(DailyRun(run_date=day - timedelta(days=1), status="succeeded", trigger="scheduler",
                         started_at=utc(2026, 1, 1)))
    session.commit()


def tick_through(engine, t: Transition, start: datetime, end: datetime, step: timedelta) -> list[tuple[datetime, str]]:
    """Tick a scheduler every ``step`` from ``start`` to ``end`` (a clock in the installation's
    zone); returns (when, decision) for each run it started."""
    clock = FixedClock(start, t.zone)
    scheduler = Scheduler(engine, clock, relay_every_seconds=10**9, stall_seconds=10**9)
    started = []
    moment = start
    while moment <= end:
        clock.set(moment)
        started += [(moment, d) for d in scheduler.tick() if d.startswith("started run")]
        broker.flush_all()  # no worker here: the run's first message is dropped
        moment += step
    return started


def run_dates(session) -> list[date]:
    session.rollback()
    return sorted(session.execute(select(DailyRun.run_date)).scalars())


@pytest.mark.parametrize("t", SPRING_FORWARD, ids=ids)
def test_a_run_time_in_the_skipped_hour_fires_once_when_the_clock_passes_it(engine, session, installation, t):
    # Given an installation in that zone, its run time inside the hour spring forward skips
    save_settings(session, daily_run_time=t.run_time)
    yesterday_ran(session, t.day)

    # When a scheduler ticks every 5 minutes from the local midnight to the next local midnight
    started = tick_through(engine, t, t.starts, t.ends, timedelta(minutes=5))

    # Then the day's run started once, at the first tick past the skipped hour
    assert [when for when, _ in started] == [t.fires_at]
    assert started[0][1].endswith(f"for {t.day.isoformat()}")
    assert run_dates(session) == [t.day - timedelta(days=1), t.day]


@pytest.mark.parametrize("t", FALL_BACK, ids=ids)
def test_a_run_time_in_the_repeated_hour_fires_once_at_its_first_pass(engine, session, installation, t):
    # Given an installation in that zone, its run time inside the hour fall back repeats
    save_settings(session, daily_run_time=t.run_time)
    yesterday_ran(session, t.day)

    # When a scheduler ticks every 5 minutes through the whole 25-hour day
    started = tick_through(engine, t, t.starts, t.ends - timedelta(seconds=1), timedelta(minutes=5))

    # Then once, at the first 01:30 (or 02:30); the second pass of that hour starts nothing
    assert [when for when, _ in started] == [t.fires_at]
    assert run_dates(session) == [t.day - timedelta(days=1), t.day]


@pytest.mark.parametrize("t", FALL_BACK, ids=ids)
def test_a_scheduler_that_missed_the_first_pass_fires_at_once_in_the_repeated_hour(engine, session, installation,
                                                                                   t):
    # Given the run time's first pass went by with no scheduler up (a host restarting)
    save_settings(session, daily_run_time=t.run_time)
    yesterday_ran(session, t.day)
    back = t.fires_at + timedelta(minutes=35)  # 01:05 (02:05 in Sydney) on the second pass

    # When a scheduler comes back during the repeated hour and ticks every 5 minutes
    started = tick_through(engine, t, back, back + timedelta(hours=2), timedelta(minutes=5))

    # Then it fires at its first tick: the run was due 35 minutes ago, although the wall clock
    # reads a time before the run time again (it used to wait for the second pass, an hour late)
    assert [when for when, _ in started] == [back]


def test_the_moment_a_run_is_due_in_a_skipped_a_repeated_and_an_ordinary_hour():
    ny, sydney = ZoneInfo("America/New_York"), ZoneInfo("Australia/Sydney")
    # skipped: the end of the gap
    assert run_moment(date(2026, 3, 8), time(2, 30), ny) == utc(2026, 3, 8, 7)
    assert run_moment(date(2026, 3, 8), time(2, 0), ny) == utc(2026, 3, 8, 7)
    assert run_moment(date(2026, 10, 4), time(2, 59), sydney) == utc(2026, 10, 3, 16)
    # repeated: the first pass
    assert run_moment(date(2026, 11, 1), time(1, 30), ny) == utc(2026, 11, 1, 5, 30)
    assert run_moment(date(2026, 4, 5), time(2, 0), sydney) == utc(2026, 4, 4, 15)
    # ordinary: the wall time, also in a half-hour zone
    assert run_moment(date(2026, 3, 8), time(3, 0), ny) == utc(2026, 3, 8, 7)
    assert run_moment(date(2026, 3, 8), time(0, 15), ZoneInfo("Asia/Kolkata")) == utc(2026, 3, 7, 18, 45)
    assert run_moment(date(2026, 3, 9), time(2, 30), ny) == utc(2026, 3, 9, 6, 30)


def test_a_half_hour_zone_fires_on_its_own_day_while_utc_is_on_the_day_before(engine, session, installation):
    t = KOLKATA
    save_settings(session, daily_run_time=t.run_time)
    yesterday_ran(session, t.day)

    started = tick_through(engine, t, t.starts, t.ends - timedelta(seconds=1), timedelta(minutes=5))

    assert [when for when, _ in started] == [t.fires_at]
    assert t.fires_at.date() == t.day - timedelta(days=1)  # the UTC date is still the 7th
    assert run_dates(session) == [t.day - timedelta(days=1), t.day]


@pytest.mark.parametrize("t", [*SPRING_FORWARD, *FALL_BACK, KOLKATA], ids=ids)
def test_today_is_the_installations_day_at_every_hour_of_a_transition_day(t):
    # Given every hour of the local day (23, 24 or 25 of them), and the instants just outside it
    hours = int((t.ends - t.starts).total_seconds() // 3600)
    clock = FixedClock(t.starts, t.zone)
    at = run_time(t.run_time)

    for n in range(hours):
        # When the clock reads that hour (and its last second)
        for moment in (t.starts + timedelta(hours=n), t.starts + timedelta(hours=n, minutes=59, seconds=59)):
            clock.set(moment)
            # Then today is the local day, whatever the UTC date, and the scheduled day is that
            # day once the run time has passed
            assert clock.today() == t.day, moment
            scheduled = scheduled_day(moment.astimezone(clock.zone), at)
            assert scheduled == (t.day if moment >= t.fires_at else t.day - timedelta(days=1)), moment
    clock.set(t.starts - timedelta(seconds=1))
    assert clock.today() == t.day - timedelta(days=1)
    clock.set(t.ends)
    assert clock.today() == t.day + timedelta(days=1)


# --- the day's invoices, live and replayed ------------------------------------------------------

@pytest.fixture
def worker(engine) -> Iterator[FixedClock]:
    """A real Dramatiq worker (threads, in-process broker) on the test's database; yields its clock."""
    clock = FixedClock(utc(2026, 1, 1))
    rt.configure(engine=engine, clock=clock, mailer=MemoryMailer(), mail_from="Billing <billing@example.com>",
                 batch_size=2)
    broker.flush_all()
    w = Worker(broker, worker_timeout=50, worker_threads=2)
    w.start()
    yield clock
    drain()
    w.stop()
    broker.flush_all()
    rt.reset()


def drain() -> None:
    for _ in range(3):
        for queue in ("billing", "emails"):
            broker.join(queue)


def build_book(session, t: Transition) -> None:
    """Clients with things due around the edge of the 14-day window seen from the local day: due
    on day + 14 (billed that day) and day + 15 (not yet). Seen from the UTC date, both would move."""
    save_settings(session, daily_run_time=t.run_time)
    for n, offset in enumerate((14, 15, -3, 0)):
        c = f.client(session, email=f"dst{n}@example.com")
        s = f.service(session, c, next_due_date=t.day + timedelta(days=offset), amount=Decimal(f"1{n}.00"),
                      domain=f"site{n}.example")
        f.addon(session, s, next_due_date=t.day + timedelta(days=offset))
    f.domain(session, c, next_due_date=t.day + timedelta(days=14), domain="dst.example")
    session.add(DailyRun(run_date=t.day - timedelta(days=1), status="succeeded", trigger="scheduler",
                         started_at=t.starts - timedelta(days=1)))
    session.commit()


def empty_book(session) -> None:
    """Every row gone but the settings: the book as it was before build_book."""
    session.rollback()
    for table in reversed(Base.metadata.sorted_tables):
        if table.name != Setting.__tablename__:
            session.execute(delete(table))
    session.commit()


def invoices_made(session) -> list[tuple]:
    """The invoices as a client sees them (client, dates, total, and each line), and their numbers
    apart: the batches run side by side, so which invoice takes which number is theirs to decide."""
    session.rollback()
    rows = session.execute(
        select(Client.email, Invoice.date_created, Invoice.date_due, Invoice.total,
               InvoiceItem.description, InvoiceItem.amount, InvoiceItem.due_date, InvoiceItem.period_end)
        .join(Client, Client.id == Invoice.client_id).join(InvoiceItem, InvoiceItem.invoice_id == Invoice.id)
        .order_by(Client.email, InvoiceItem.description)).all()
    numbers = sorted(session.execute(select(Invoice.number)).scalars())
    session.rollback()
    return [tuple(r) for r in rows] + [("numbers", *numbers)]


@pytest.mark.parametrize("t", [SPRING_FORWARD[2], FALL_BACK[0]], ids=ids)
def test_the_days_run_bills_as_of_the_local_day_and_a_replay_makes_the_same_invoices(engine, session, worker, t):
    clock = worker
    # Given the book, and the scheduler ticking through the transition day until the run fired
    build_book(session, t)
    session.rollback()
    scheduler = Scheduler(engine, clock, relay_every_seconds=10**9, stall_seconds=10**9)
    moment, fired = t.starts, []
    while not fired:
        clock.set(moment)
        fired = [d for d in scheduler.tick() if d.startswith("started run")]
        moment += timedelta(minutes=5)
    drain()
    live = invoices_made(session)

    # Then the run billed as of the local day: created that day, due up to day + 14, never day + 15
    assert fired == [f"started run #{_run_id(session, t.day)} for {t.day.isoformat()}"]
    lines = live[:-1]
    assert {row[1] for row in lines} == {t.day}
    assert max(row[6] for row in lines) == t.day + timedelta(days=14)
    assert {row[0] for row in lines} == {"dst0@example.com", "dst2@example.com", "dst3@example.com"}
    assert live[-1] == ("numbers", 1, 2, 3, 4)

    # When the same book is restored and the day replayed three days later (daily-run --as-of)
    empty_book(session)
    build_book(session, t)
    session.rollback()
    clock.set(t.ends + timedelta(days=3, hours=5))
    run_daily_automation.send(as_of=t.day.isoformat(), trigger="cli")
    drain()

    # Then the replay made the same invoices, line for line, dates included, numbered 1..4 again
    assert invoices_made(session) == live

    # And replaying it again changes nothing: the day has its run
    run_daily_automation.send(as_of=t.day.isoformat(), trigger="cli")
    drain()
    assert invoices_made(session) == live


def _run_id(session, day: date) -> int:
    session.rollback()
    found = session.execute(select(DailyRun.id).where(DailyRun.run_date == day)).scalar_one()
    session.rollback()
    return found


def test_the_run_time_at_local_midnight_fires_once_on_each_side_of_a_transition(engine, session, installation):
    # Given New York, the run at 00:00, ticking every 10 minutes over three days around spring forward
    t = SPRING_FORWARD[0]
    save_settings(session, daily_run_time="00:00")
    yesterday_ran(session, t.day - timedelta(days=1))

    started = tick_through(engine, t, t.starts - timedelta(days=1), t.ends + timedelta(days=1) - timedelta(seconds=1),
                           timedelta(minutes=10))

    # Then one run a day, each at its local midnight: 05:00 UTC before the change, 04:00 after
    assert [when for when, _ in started] == [t.starts - timedelta(days=1), t.starts, t.ends]
    assert run_dates(session) == [t.day - timedelta(days=2), t.day - timedelta(days=1), t.day,
                                  t.day + timedelta(days=1)]


def test_run_time_and_scheduled_day_read_the_local_wall_clock():
    # A local time, not an offset: 02:30 is after 02:00 and before 03:00 whatever the zone's offset
    assert run_time("02:30") == time(2, 30)
    assert scheduled_day(datetime(2026, 3, 8, 3, 0), time(2, 30)) == date(2026, 3, 8)
    assert scheduled_day(datetime(2026, 3, 8, 1, 59), time(2, 30)) == date(2026, 3, 7)
