"""Which database a session talks to, and picking the code written for it.

Every store function keeps one implementation per dialect in a small table keyed by the
SQLAlchemy dialect name; a new database (MySQL/MariaDB, issue 13) is one more entry per table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from sqlalchemy.orm import Session

T = TypeVar("T")


def dialect_name(session_or_bind) -> str:
    """``"postgresql"``, ``"sqlite"``, ``"mysql"``: the dialect of a Session, Engine or Connection.

    MariaDB is ``"mysql"`` here whichever URL scheme reached it (SQLAlchemy names it ``"mysql"``
    through ``mysql+pymysql://`` and ``"mariadb"`` through ``mariadb+pymysql://``): one entry
    per table serves both, and the few differences are asked of ``is_mariadb``.
    """
    bind = session_or_bind.get_bind() if isinstance(session_or_bind, Session) else session_or_bind
    name = bind.dialect.name
    return "mysql" if name == "mariadb" else name


def is_mariadb(session_or_bind) -> bool:
    """Whether the MySQL-family server is MariaDB (which has ``INSERT ... RETURNING``; MySQL 8 does not)."""
    bind = session_or_bind.get_bind() if isinstance(session_or_bind, Session) else session_or_bind
    return bool(getattr(bind.dialect, "is_mariadb", False))


def for_dialect(session_or_bind, implementations: Mapping[str, T], what: str) -> T:
    """The entry of ``implementations`` for this dialect; an unknown dialect is refused by name."""
    name = dialect_name(session_or_bind)
    try:
        return implementations[name]
    except KeyError:
        raise NotImplementedError(f"{what}: no implementation for the {name!r} database") from None
