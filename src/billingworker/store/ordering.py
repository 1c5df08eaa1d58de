"""``ORDER BY ... NULLS LAST``, which MySQL and MariaDB do not parse."""

from __future__ import annotations

from sqlalchemy.orm import Session

from .dialect import dialect_name


def nulls_last(session: Session, column, *, descending: bool = False) -> tuple:
    """The ORDER BY terms of ``column`` (ascending, or ``descending``) with NULLs after every
    value: ``.order_by(*nulls_last(session, col, descending=True))``.

    MySQL/MariaDB sort NULL below every value and have no NULLS LAST: there the terms are
    ``column IS NULL`` (false, 0, first) then the column itself.
    """
    ordered = column.desc() if descending else column.asc()
    if dialect_name(session) == "mysql":
        return (column.is_(None), ordered)
    return (ordered.nulls_last(),)
