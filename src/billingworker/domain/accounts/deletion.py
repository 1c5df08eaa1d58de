"""Deleting a client (SPEC §12): the client and everything of theirs goes, except transactions,
which are income records and stay for the books (their ``client_id`` becomes NULL).

Which tables hold a client's rows is read from the models (every table with a ``client_id``
column), so a table added later is deleted (and merged, see ``merging.py``) without anyone
having to remember this module; the exceptions are listed here by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Table, delete, exists, select, update
from sqlalchemy.orm import Session, aliased

from ...db import for_update
from ..models import (
    Base,
    BilledPeriod,
    CancelRequest,
    Client,
    ClientExport,
    ClientUser,
    Invoice,
    InvoiceLateFee,
    InvoiceReminder,
    JobReceipt,
    PasswordResetToken,
    Service,
    Transaction,
    User,
)

ACTOR = "delete_client"
#: Tables whose ``client_id`` rows outlive the client: transactions (income, SPEC §1), and the
#: worker's own history of server-module commands and job failures (no foreign key on purpose).
KEPT_TABLES = frozenset({"transactions", "module_commands", "job_failures"})
#: Longest ``transactions.description`` (String(500)).
_DESCRIPTION_MAX = 500


def client_tables() -> list[Table]:
    """Every table with a ``client_id`` column except ``clients`` itself, children first (a
    table comes before the tables its foreign keys point to), so deleting in this order never
    trips a foreign key on PostgreSQL or SQLite."""
    return [t for t in reversed(Base.metadata.sorted_tables) if "client_id" in t.c and t.name != "clients"]


def deletion_key(client_id: int) -> str:
    """The ``job_receipts`` key that remembers a client was deleted (and what went with it)."""
    return f"{ACTOR}:client:{client_id}"


@dataclass
class DeletionResult:
    client_id: int
    #: "deleted", "already_deleted" (a receipt says we deleted it before) or "not_found".
    outcome: str
    #: Rows deleted per table (``users`` only with ``delete_users``).
    deleted: dict[str, int] = field(default_factory=dict)
    #: Transactions kept for the books, now without a client.
    transactions_kept: int = 0
    #: Export files (names inside EXPORTS_DIR) the caller removes from disk after the commit.
    export_files: list[str] = field(default_factory=list)
    #: The numbers of the invoices deleted (Drafts have none): the gaps they leave in the
    #: numbering are explained by them (``reports/reconciliation_checks``).
    invoice_numbers: list[int] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"client_id": self.client_id, "outcome": self.outcome, "deleted": self.deleted,
                "transactions_kept": self.transactions_kept, "export_files": self.export_files,
                "invoice_numbers": self.invoice_numbers}


def delete_client(session: Session, client_id: int, *, delete_users: bool = False,
                  now: datetime) -> DeletionResult:
    """Delete the client and every row of theirs except transactions; ``delete_users`` also
    deletes the client's users that belong to no other client.

    Locks the client row first, so two deletions (or a deletion and a billing job) of one client
    are serialised; the second finds the client gone. Idempotent: a client already deleted by
    this job answers "already_deleted" (a ``job_receipts`` row keyed ``delete_client:client:<id>``
    written in the same transaction), an id never seen answers "not_found"; neither is an
    error. The caller commits, then removes ``export_files`` from disk.
    """
    found = session.execute(for_update(select(Client.id).where(Client.id == client_id))).scalar()
    if found is None:
        receipt = session.execute(select(JobReceipt.result).where(JobReceipt.key == deletion_key(client_id))).scalar()
        if receipt is None:
            return DeletionResult(client_id, "not_found")
        before = json.loads(receipt)
        return DeletionResult(client_id, "already_deleted", transactions_kept=before.get("transactions_kept", 0),
                              export_files=before.get("export_files", []))
    result = DeletionResult(client_id, "deleted")
    result.export_files = list(session.execute(
        select(ClientExport.filename).where(ClientExport.client_id == client_id).order_by(ClientExport.id)).scalars())
    invoice_ids = select(Invoice.id).where(Invoice.client_id == client_id).scalar_subquery()
    result.invoice_numbers = list(session.execute(select(Invoice.number).where(
        Invoice.client_id == client_id, Invoice.number.is_not(None)).order_by(Invoice.number)).scalars())
    result.transactions_kept = _keep_transactions(session, client_id)
    users = _users_of_no_other_client(session, client_id) if delete_users else []

    # Rows that hang off the client's invoices, services and users without a client_id of their own.
    for table, where in ((BilledPeriod, BilledPeriod.invoice_id.in_(invoice_ids)),
                         (InvoiceReminder, InvoiceReminder.invoice_id.in_(invoice_ids)),
                         (InvoiceLateFee, InvoiceLateFee.invoice_id.in_(invoice_ids)),
                         (CancelRequest, CancelRequest.service_id.in_(
                             select(Service.id).where(Service.client_id == client_id).scalar_subquery()))):
        _count(result, table.__tablename__, session.execute(delete(table).where(where)).rowcount)
    for table in client_tables():
        if table.name not in KEPT_TABLES:
            _count(result, table.name, session.execute(delete(table).where(table.c.client_id == client_id)).rowcount)
    if users:
        session.execute(delete(PasswordResetToken).where(PasswordResetToken.user_id.in_(users)))
        _count(result, "users", session.execute(delete(User).where(User.id.in_(users))).rowcount)
    session.execute(delete(Client).where(Client.id == client_id))
    _remember(session, client_id, result, now)
    return result


def _count(result: DeletionResult, table: str, rows: int) -> None:
    if rows:
        result.deleted[table] = result.deleted.get(table, 0) + rows


def _keep_transactions(session: Session, client_id: int) -> int:
    """Detach the client's transactions (and any paying one of the client's invoices) from the
    client and the invoices about to go, writing the invoice number and the client id into the
    description first, so that the books can still say what the money was for."""
    rows = session.execute(
        select(Transaction.id, Transaction.description, Transaction.client_id, Invoice.id.label("invoice_id"),
               Invoice.number, Invoice.client_id.label("invoice_client_id"))
        .outerjoin(Invoice, Invoice.id == Transaction.invoice_id)
        .where((Transaction.client_id == client_id) | (Invoice.client_id == client_id))
        .order_by(Transaction.id)).all()
    for row in rows:
        notes = []
        if row.invoice_id is not None and row.invoice_client_id == client_id:
            invoice = f"Invoice #{row.number}" if row.number is not None else f"invoice id {row.invoice_id}"
            if invoice not in row.description:
                notes.append(invoice)
        if row.client_id == client_id:
            notes.append(f"deleted client #{client_id}")
        description = row.description
        if notes:
            description = (f"{row.description} ({', '.join(notes)})" if row.description
                           else ", ".join(notes))[:_DESCRIPTION_MAX]
        values: dict = {"description": description}
        if row.client_id == client_id:
            values["client_id"] = None
        if row.invoice_client_id == client_id:
            values["invoice_id"] = None
        session.execute(update(Transaction).where(Transaction.id == row.id).values(**values))
    return sum(1 for row in rows if row.client_id == client_id)


def _users_of_no_other_client(session: Session, client_id: int) -> list[int]:
    """The client's users that no other client shares, locked so that a concurrent invitation to
    another client waits for the deletion (and then finds the user gone)."""
    link = aliased(ClientUser)
    other = exists().where(link.user_id == User.id, link.client_id != client_id)
    return list(session.execute(
        select(User.id).join(ClientUser, ClientUser.user_id == User.id)
        .where(ClientUser.client_id == client_id, ~other).order_by(User.id).with_for_update(of=User)).scalars())


def _remember(session: Session, client_id: int, result: DeletionResult, now: datetime) -> None:
    """Write (or, for an id SQLite handed out again, overwrite) the deletion receipt."""
    key = deletion_key(client_id)
    payload = json.dumps(result.as_dict())
    if session.execute(update(JobReceipt).where(JobReceipt.key == key).values(result=payload, created_at=now)).rowcount:
        return
    session.add(JobReceipt(key=key, actor=ACTOR, result=payload, created_at=now))
    session.flush()
