"""The one place that knows what "today" is.

"Today" is a calendar date in the installation's time zone (SPEC §2: a worker in UTC must not
bill a Sydney installation a day early). Domain code never reads the system clock: it receives
an ``as_of`` date, which actors resolve through a ``Clock`` once per job.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Protocol, overload
from zoneinfo import ZoneInfo


class Clock(Protocol):
    def now(self) -> datetime: ...  # aware, UTC
    def today(self) -> date: ...  # installation-local calendar date


class SystemClock:
    def __init__(self, time_zone: str = "UTC") -> None:
        self.zone = ZoneInfo(time_zone)

    def now(self) -> datetime:
        return datetime.now(UTC)

    def today(self) -> date:
        return datetime.now(self.zone).date()


class FixedClock:
    """A clock that says what it is told; tests and the demo move it by hand."""

    def __init__(self, now: datetime, time_zone: str = "UTC") -> None:
        if now.tzinfo is None:
            raise ValueError("FixedClock needs an aware datetime")
        self._now = now
        self.zone = ZoneInfo(time_zone)

    def now(self) -> datetime:
        return self._now

    def today(self) -> date:
        return self._now.astimezone(self.zone).date()

    def set(self, now: datetime) -> None:
        self._now = now


#: ``Session.info`` key of the installation's time zone (BILLING_TIME_ZONE): ``db.session_factory``
#: puts it there, the domain's ``settings.local_day`` reads a stored instant as that zone's day.
TIME_ZONE_INFO = "billingworker.time_zone"


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...


def as_utc(moment: datetime | None) -> datetime | None:
    """Aware UTC (None stays None); MySQL/MariaDB and SQLite hand timestamps back naive (they are
    stored in UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
