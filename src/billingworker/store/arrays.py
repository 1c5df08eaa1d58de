"""Array parameters: thousands of values as one bind parameter where the database has arrays."""

from __future__ import annotations

from sqlalchemy import any_, bindparam
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from .dialect import dialect_name


def _among_postgresql(column, values: list):
    return column == any_(bindparam(None, values, type_=ARRAY(column.type)))


def _among_in_list(column, values: list):
    return column.in_(values)


_AMONG = {"postgresql": _among_postgresql, "sqlite": _among_in_list, "mysql": _among_in_list}


def among(session: Session, column, values):
    """``column IN values`` as ONE array parameter on PostgreSQL (``= ANY(:values)``).

    A batch passes thousands of ids; rendering each as its own bind parameter costs more than
    the query itself. SQLite and MySQL have no arrays and get the ordinary IN list (as does any database
    without an entry here: the IN list works everywhere).
    """
    return _AMONG.get(dialect_name(session), _among_in_list)(column, list(values))
