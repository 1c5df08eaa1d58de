"""Which database a session talks to, and picking the code written for it.

Every store function keeps one implementation per dialect in a small table keyed by the
SQLAlchemy dialect name; a new database (MySQL/MariaDB, issue 13) is one more entry per table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from sqlalchemy.orm import Session

from .mysql_ddl import MYSQL8_SPELLING

T = TypeVar("T")


def dialect_name(session_or_bind) -> str:
    """``"postgresql"``, ``"sqlite"``, ``"mysql"``: the dialect of a Session, Engine or Connection.

    MariaDB is ``"mysql"`` here whichever URL scheme reached it (SQLAlchemy names it ``"mysql"``
    through ``mysql+pymysql://`` and ``"mariadb"`` through ``mariadb+pymysql://``): one entry
    per table serves both, and the few differences are asked of what the server can do
    (``returns_from_insert``; the DDL asks ``mysql_ddl.spelled_for_mysql8``).
    """
    bind = session_or_bind.get_bind() if isinstance(session_or_bind, Session) else session_or_bind
    name = bind.dialect.name
    return "mysql" if name == "mariadb" else name


def returns_from_insert(session_or_bind) -> bool:
    """Whether ``INSERT ... RETURNING`` exists here: PostgreSQL, SQLite 3.35+ and MariaDB 10.5+
    have it, MySQL 8 does not (SQLAlchemy reads it off the server's version at first connect)."""
    bind = session_or_bind.get_bind() if isinstance(session_or_bind, Session) else session_or_bind
    return bool(bind.dialect.insert_returning)


def as_mysql8(dialect) -> None:
    """Tell a MariaDB dialect (after its first connect) what MySQL 8 lacks: INSERT and DELETE
    have no RETURNING (the store takes its MySQL 8 forms; any ``.returning()`` fails to compile)
    and the DDL is spelled as for MySQL 8 (``mysql_ddl.spelled_for_mysql8``). For the tests and
    the bench (``mysql8-forms``), which so run the MySQL 8 code on a real InnoDB server, there
    being no MySQL 8 server here; never for production."""
    dialect.insert_returning = dialect.delete_returning = False
    dialect.insert_executemany_returning = False
    dialect.insert_executemany_returning_sort_by_parameter_order = False
    setattr(dialect, MYSQL8_SPELLING, True)  # and the DDL spelled as for MySQL 8 (collation aside)


def for_dialect(session_or_bind, implementations: Mapping[str, T], what: str) -> T:
    """The entry of ``implementations`` for this dialect; an unknown dialect is refused by name."""
    name = dialect_name(session_or_bind)
    try:
        return implementations[name]
    except KeyError:
        raise NotImplementedError(f"{what}: no implementation for the {name!r} database") from None
