"""Writing invoices: numbers, rows, items, billed periods, credit spent.

Lock order everywhere in billingworker: client rows (by id) -> invoice rows -> the invoice
number sequence. Keeping one order means two jobs can wait for each other but never deadlock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from sqlalchemy import bindparam, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...store.arrays import among
from ...store.bulk import (
    foreign_keys_checked_per_statement,
    insert_rows,
    insert_rows_returning_ids,
    reserve_ids,
    update_rows,
)
from ...store.conflicts import is_unique_clash_on
from ...store.counters import add_to_counter
from ...store.locks import locks_only_the_named_table
from ...store.returning import update_returning
from ..models import (
    BilledPeriod,
    Client,
    ClientGroup,
    CreditHistory,
    Currency,
    Invoice,
    InvoiceItem,
    InvoiceKind,
    InvoiceSequence,
    InvoiceStatus,
)
from ..money import ZERO
from .invoice_plan import ClientInfo, InvoicePlan

INVOICE_SEQUENCE = "invoice"


def lock_clients(session: Session, client_ids: Sequence[int]) -> dict[int, ClientInfo]:
    """Lock the clients' rows (in id order) and read what invoicing needs.

    The row lock serialises every billing job of one client: a second worker handling the same
    client waits here, then sees what the first one committed.
    """
    if not client_ids:
        return {}
    stmt = (
        select(Client.id, Client.email, Client.status, Client.currency_id, Client.credit_balance,
               Client.separate_invoices, Client.country, Client.state, Client.tax_exempt,
               Currency.minor_units, ClientGroup.separate_invoices.label("group_separate"))
        .outerjoin(Currency, Currency.id == Client.currency_id)
        .outerjoin(ClientGroup, ClientGroup.id == Client.group_id)
        .where(among(session, Client.id, sorted(set(client_ids))))
        .order_by(Client.id)
    )
    if locks_only_the_named_table(session):
        stmt = stmt.with_for_update(of=Client)
    else:
        session.execute(select(Client.id).where(among(session, Client.id, sorted(set(client_ids))))
                        .order_by(Client.id).with_for_update())
    out = {}
    for r in session.execute(stmt):
        out[r.id] = ClientInfo(
            id=r.id, email=r.email, status=r.status, currency_id=r.currency_id,
            minor_units=r.minor_units if r.minor_units is not None else 2,
            credit_balance=Decimal(r.credit_balance), separate_invoices=bool(r.separate_invoices or r.group_separate),
            country=r.country or "", state=r.state or "", tax_exempt=bool(r.tax_exempt),
        )
    return out


#: ``Session.info`` key of the whole-day preview's sessions (``actors/day_preview.py``): their
#: work is rolled back, so they must never hold what real jobs wait for.
PREVIEW_SESSION = "billingworker.preview"


def for_update_of_invoices(session: Session, stmt, client_ids: Sequence[int]):
    """``stmt`` (a select of invoices joined to other tables) locking the invoice rows it reads
    and no other: ``FOR UPDATE OF invoices``. MariaDB has no ``OF``, and would lock every joined
    row too (the currency row all clients of a currency share); there the clients' Unpaid
    standard invoices are locked by themselves first, and ``stmt`` reads without a lock."""
    if locks_only_the_named_table(session):
        return stmt.with_for_update(of=Invoice)
    session.execute(select(Invoice.id).where(among(session, Invoice.client_id, sorted(set(client_ids))),
                                             Invoice.status == InvoiceStatus.UNPAID,
                                             Invoice.kind == InvoiceKind.STANDARD)
                    .order_by(Invoice.id).with_for_update())
    return stmt


def allocate_invoice_numbers(session: Session, count: int) -> int:
    """Take ``count`` consecutive invoice numbers; returns the first.

    The sequence row stays locked until the caller's transaction ends: a rollback gives the
    numbers back (no gaps) and concurrent workers queue for it (no repeats). Take numbers as
    late as possible in a transaction to keep that wait short. A preview session takes none:
    ``_preview_numbers``.
    """
    if session.info.get(PREVIEW_SESSION):
        return _preview_numbers(session, count)
    def take() -> list:
        return update_returning(session, InvoiceSequence, [InvoiceSequence.name == INVOICE_SEQUENCE],
                                {"last_number": InvoiceSequence.last_number + count}, [InvoiceSequence.last_number])

    taken = take()
    if taken:
        [(last,)] = taken
    else:  # the first numbers ever: the row is made, by one of the workers that got here at once
        add_to_counter(session, InvoiceSequence, {"name": INVOICE_SEQUENCE}, "last_number", count)
        last = session.scalar(select(InvoiceSequence.last_number).where(InvoiceSequence.name == INVOICE_SEQUENCE))
    return last - count + 1


def _preview_numbers(session: Session, count: int) -> int:
    """Numbers for a preview's invoices without touching the sequence row: a preview holding its
    lock would make every real job that numbers an invoice wait for the preview's batch. They
    are negative (-1, -2, ... counted in the session), so they can never meet a real number in
    the unique index, and are rolled back with the rest of the preview."""
    taken = session.info.get("preview_numbers_taken", 0) + count
    session.info["preview_numbers_taken"] = taken
    return -taken


@dataclass
class WrittenInvoice:
    id: int
    plan: InvoicePlan
    #: Given by ``write_invoice_rows`` (NULL for a Draft).
    number: int | None = None
    #: The invoice row is already written (without its number): see ``write_items_and_periods``.
    row_written: bool = False


def write_invoices(session: Session, plans: Sequence[InvoicePlan], *, source: str,
                   cancelled_periods: Sequence[tuple[str, int, date]] = ()) -> list[WrittenInvoice]:
    """``write_items_and_periods`` then ``write_invoice_rows``: for callers with nothing to do in between."""
    stored = write_items_and_periods(session, plans, cancelled_periods=cancelled_periods)
    write_invoice_rows(session, stored, source=source)
    return stored


def write_items_and_periods(session: Session, plans: Sequence[InvoicePlan], *,
                            cancelled_periods: Sequence[tuple[str, int, date]] = (),
                            billed_on: date | None = None) -> list[WrittenInvoice]:
    """Reserve the invoices' ids and insert their items and billed periods.

    The invoice rows themselves are written by ``write_invoice_rows``, which must run before the
    commit (the items' foreign key is checked at commit). ``cancelled_periods`` are billed periods held
    by Cancelled invoices that these plans take over. A period held by any other invoice makes the
    insert fail (primary key): the caller rolls back and nothing is billed twice.

    ``billed_on`` (the due-invoice generation's day; None for other paths) is recorded on every
    billed period: a thing already billed on that billing day makes the insert fail too (unique index).

    Where foreign keys are checked at each statement (MySQL/MariaDB), the invoice rows are
    written first, without their numbers, and ``write_invoice_rows`` numbers them: the same rows
    at the commit, the numbers still taken last.
    """
    if not plans:
        return []
    if cancelled_periods:
        session.execute(
            BilledPeriod.__table__.delete().where(
                BilledPeriod.item_type == bindparam("t"), BilledPeriod.item_id == bindparam("i"),
                BilledPeriod.due_date == bindparam("d"),
                BilledPeriod.invoice_id.in_(select(Invoice.id).where(Invoice.status == InvoiceStatus.CANCELLED)),
            ),
            [{"t": t, "i": i, "d": d} for t, i, d in cancelled_periods],
        )
    if foreign_keys_checked_per_statement(session):
        stored = [WrittenInvoice(0, p, row_written=True) for p in plans]
        ids = insert_rows_returning_ids(session, Invoice.__table__, [_invoice_row(s, with_id=False) for s in stored])
        for s, invoice_id in zip(stored, ids, strict=True):
            s.id = invoice_id
    else:
        ids = reserve_ids(session, Invoice.__table__, len(plans))
        stored = [WrittenInvoice(i, p) for i, p in zip(ids, plans, strict=True)]
    items, periods = [], []
    for s in stored:
        for ln in s.plan.items:
            items.append({
                "invoice_id": s.id, "client_id": s.plan.client_id, "item_type": ln.item_type,
                "item_id": ln.item_id, "description": ln.description, "amount": ln.amount,
                "taxed": ln.taxed, "due_date": ln.due_date, "period_end": ln.period_end,
            })
        periods.extend({"item_type": t, "item_id": i, "due_date": d, "invoice_id": s.id, "billed_on": billed_on}
                       for t, i, d in s.plan.billed_periods)
    insert_rows(session, InvoiceItem.__table__, items)
    insert_rows(session, BilledPeriod.__table__, periods)
    return stored


def is_billed_period_clash(exc: IntegrityError) -> bool:
    """Whether ``exc`` is a ``billed_periods`` guard refusing a billed period: another invoice holds
    the period, or the thing was already billed on that billing day. To a billing run that means
    "already billed" (by a worker it raced with, or another application), not an error."""
    return is_unique_clash_on(exc, BilledPeriod.__tablename__)


def write_invoice_rows(session: Session, stored: Sequence[WrittenInvoice], *, source: str) -> None:
    """Number and write the invoice rows, and take the credit they spend; the last writes before
    the commit.

    Numbers come last because taking them locks the sequence row until the commit: the later
    they are taken, the shorter other workers wait. Credit is taken from the client rows (which
    the caller has locked) with a credit-history entry naming the invoice number.
    """
    if not stored:
        return
    numbered = [s for s in stored if s.plan.status != InvoiceStatus.DRAFT]
    first = allocate_invoice_numbers(session, len(numbered)) if numbered else 0
    for n, s in enumerate(numbered):
        s.number = first + n
    insert_rows(session, Invoice.__table__, [_invoice_row(s) for s in stored if not s.row_written])
    update_rows(session, Invoice.__table__, [{"id": s.id, "number": s.number} for s in numbered if s.row_written])
    credit_rows, balances = [], {}
    for s in stored:
        if s.plan.credit_applied > 0:
            balances[s.plan.client_id] = balances.get(s.plan.client_id, ZERO) + s.plan.credit_applied
            credit_rows.append({
                "client_id": s.plan.client_id, "date": s.plan.date_created, "invoice_id": s.id,
                "description": f"Credit Applied to Invoice #{s.number}", "amount": -s.plan.credit_applied,
                "source": source,
            })
    if balances:
        _spend_credit(session, balances, credit_rows)


def _invoice_row(s: WrittenInvoice, *, with_id: bool = True) -> dict:
    p, t = s.plan, s.plan.totals
    return {
        **({"id": s.id} if with_id else {}), "number": s.number, "client_id": p.client_id, "currency_id": p.currency_id,
        "kind": p.kind, "status": p.status, "date_created": p.date_created, "date_due": p.date_due,
        "date_paid": p.date_paid, "payment_method": p.payment_method, "subtotal": t.subtotal,
        "tax1": t.tax1, "tax2": t.tax2, "tax_name1": t.name1, "tax_name2": t.name2, "tax_rate1": t.rate1,
        "tax_rate2": t.rate2, "total": t.total, "credit_applied": p.credit_applied,
        "balance_due": max(p.balance_due, ZERO),
    }


def _spend_credit(session: Session, spent: dict[int, Decimal], credit_rows: list[dict]) -> None:
    current = dict(session.execute(
        select(Client.id, Client.credit_balance).where(Client.id.in_(spent))).all())
    running = {cid: Decimal(v) for cid, v in current.items()}
    for row in credit_rows:
        running[row["client_id"]] += row["amount"]
        row["balance_after"] = running[row["client_id"]]
    # The CHECK constraint (credit_balance >= 0) is the last guard if a plan overspent.
    update_rows(session, Client.__table__, [{"id": cid, "credit_balance": running[cid]} for cid in spent])
    insert_rows(session, CreditHistory.__table__, credit_rows)

