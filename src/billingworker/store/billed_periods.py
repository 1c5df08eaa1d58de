"""Looking billed periods up by item key: the claim check of a billing run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date

from sqlalchemy import Table, select
from sqlalchemy.orm import Session

from .dialect import for_dialect

#: One key: (item id, due date).
Key = tuple[int, date]
#: One answer: (item type, item id, due date, billed on, invoice status).
Row = tuple[str, int, date, "date | None", str]


def _postgresql(session: Session, billed_periods: Table, invoices: Table,
                keys_by_type: Mapping[str, Sequence[Key]], billed_on: date | None) -> list[Row]:
    probe = ("SELECT b.due_date, b.billed_on, b.invoice_id FROM billed_periods b"
             " WHERE b.item_type = %(type)s AND b.item_id = k.item_id AND b.due_date = k.due_date")
    if billed_on is not None:
        # Second look-up, same statement: the period the thing took on the billing day.
        probe += (" UNION ALL SELECT b.due_date, b.billed_on, b.invoice_id FROM billed_periods b"
                  " WHERE b.item_type = %(type)s AND b.item_id = k.item_id AND b.billed_on = %(day)s")
    # Binary array parameters (%b): ids and dates travel without text formatting.
    sql = ("SELECT k.item_id, bp.due_date, bp.billed_on, i.status"
           " FROM unnest(%(ids)b::integer[], %(dates)b::date[]) AS k(item_id, due_date)"
           f" CROSS JOIN LATERAL ({probe}) AS bp"
           " JOIN invoices i ON i.id = bp.invoice_id")
    conn = session.connection()
    rows: list[Row] = []
    for item_type, keys in keys_by_type.items():
        result = conn.exec_driver_sql(sql, {"type": str(item_type), "ids": [item_id for item_id, _ in keys],
                                            "dates": [due_date for _, due_date in keys], "day": billed_on})
        rows.extend((item_type, *row) for row in result)
    return rows


def _sqlite(session: Session, billed_periods: Table, invoices: Table,
            keys_by_type: Mapping[str, Sequence[Key]], billed_on: date | None) -> list[Row]:
    bp, inv = billed_periods.c, invoices.c
    columns = (bp.item_id, bp.due_date, bp.billed_on, inv.status)
    rows: list[Row] = []
    for item_type, keys in keys_by_type.items():
        ids = sorted({item_id for item_id, _ in keys})
        stmt = (select(*columns).join(invoices, inv.id == bp.invoice_id)
                .where(bp.item_type == item_type, bp.item_id.in_(ids),
                       bp.due_date >= min(due_date for _, due_date in keys)))
        if billed_on is not None:
            stmt = stmt.union_all(
                select(*columns).join(invoices, inv.id == bp.invoice_id)
                .where(bp.item_type == item_type, bp.item_id.in_(ids), bp.billed_on == billed_on))
        rows.extend((item_type, *row) for row in session.execute(stmt))
    return rows


_BILLED_PERIODS_OF = {"postgresql": _postgresql, "sqlite": _sqlite, "mysql": _sqlite}


def billed_periods_of(session: Session, billed_periods: Table, invoices: Table,
                      keys_by_type: Mapping[str, Sequence[Key]], billed_on: date | None) -> list[Row]:
    """The billed periods on each (item type, item id, due date) key and, with ``billed_on``,
    the one each item took on that billing day, with the status of the invoice holding each.

    One statement per item type, of exact index look-ups (the primary key, and the unique
    (type, id, billed_on) index). On PostgreSQL the keys travel as arrays and each one probes
    the indexes through a LATERAL subquery: its reference to the key forces a nested loop of
    index look-ups, whatever the statistics say (a billing run keeps outdating them: planned
    as a plain join against a table the planner believes empty, the look-up became a hash join
    over every billed period of the type, slower with each batch). Elsewhere (SQLite, MySQL)
    over the key prefix.
    """
    find = for_dialect(session, _BILLED_PERIODS_OF, "billed_periods_of")
    return find(session, billed_periods, invoices, keys_by_type, billed_on)
