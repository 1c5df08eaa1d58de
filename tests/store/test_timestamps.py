"""Timestamps are moments: an aware value in any zone is stored as the same instant in UTC, on
every database, through the ORM as through the bulk paths (``store/bulk.py``)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sqlalchemy import select

from billingworker.clock import as_utc
from billingworker.domain.models import Client
from tests import factories as f

BERLIN_NOON = datetime(2026, 3, 1, 12, 0, tzinfo=ZoneInfo("Europe/Berlin"))  # 11:00 UTC


def test_an_aware_timestamp_in_another_zone_is_stored_as_its_instant(session):
    # Given a client parked at noon in Berlin, written through the ORM
    c = f.client(session)
    c.parked_at = BERLIN_NOON
    session.commit()
    session.expire_all()
    # Then it reads back as 11:00 UTC (MySQL/MariaDB and SQLite keep no zone: PyMySQL and sqlite3
    # would have written 12:00 and dropped the zone)
    assert as_utc(session.get(Client, c.id).parked_at) == datetime(2026, 3, 1, 11, 0, tzinfo=UTC)


def test_a_comparison_with_an_aware_timestamp_compares_instants(session):
    c = f.client(session)
    c.parked_at = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    session.commit()
    # 12:30 in Berlin is 11:30 UTC: after the parking; 11:30 in Berlin (10:30 UTC) is before it
    after = datetime(2026, 3, 1, 12, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    before = datetime(2026, 3, 1, 11, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert session.scalars(select(Client.id).where(Client.parked_at < after)).all() == [c.id]
    assert session.scalars(select(Client.id).where(Client.parked_at < before)).all() == []
