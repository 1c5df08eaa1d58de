"""Declarative base and the column types every aggregate shares."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from sqlalchemy import DateTime, MetaData, Numeric, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from ...store.column_types import LONG_TEXT  # noqa: F401 - the models' free-text type, named here with the others

# Stable constraint names, so Alembic migrations name the same thing on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: Money columns: NUMERIC with 4 decimal places so that currencies with 0, 2 or 3 minor
#: units all fit; values are rounded to the currency's own minor unit before they are stored.
MONEY = Numeric(18, 4)
#: Tax and exchange rates.
RATE = Numeric(12, 6)


class UtcTimestamp(TypeDecorator):
    """A moment, stored in UTC: ``timestamptz`` on PostgreSQL. MySQL/MariaDB (``DATETIME(6)``, the
    connection's zone +00:00) and SQLite (text) keep no zone, and their drivers would write an
    aware value's wall-clock time and drop its zone: there it is converted to UTC first, whether
    it is written or compared with."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if isinstance(value, datetime) and value.tzinfo is not None and dialect.name != "postgresql":
            return value.astimezone(UTC).replace(tzinfo=None)
        return value


#: Timestamps are stored in UTC (timestamptz on PostgreSQL).
TIMESTAMP = UtcTimestamp()


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {Decimal: MONEY, datetime: TIMESTAMP}


def money_column(default: str = "0") -> Mapped[Decimal]:
    return mapped_column(MONEY, nullable=False, default=Decimal(default), server_default=default)
