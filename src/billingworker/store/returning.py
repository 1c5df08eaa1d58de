"""``UPDATE ... RETURNING``, which MySQL and MariaDB do not have (MariaDB returns from INSERT
and DELETE only).

There the UPDATE runs alone and the new values are read back by the same key: the UPDATE
holds the row locks until the transaction ends, so nobody changed them in between.
"""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.engine import Row
from sqlalchemy.orm import Session

from .dialect import dialect_name


def update_returning(session: Session, table, where, values: dict, returning) -> list[Row]:
    """``UPDATE table SET values WHERE where RETURNING returning``: the updated rows' ``returning``
    columns (empty if no row matched). ``where`` is a list of conditions, ``returning`` of columns."""
    stmt = update(table).where(*where).values(values)
    if dialect_name(session) != "mysql":
        return list(session.execute(stmt.returning(*returning)))
    if session.execute(stmt).rowcount == 0:
        return []
    return list(session.execute(select(*returning).where(*where)))
