"""Exporting one client's data (SPEC §12) as a JSON document written to EXPORTS_DIR, recorded in
``client_exports`` so that an app can offer it as a download.

No secret ever goes into the document: users and pay methods are exported from a list of
allowed columns (no password or security-answer hash, no card data, no gateway token), and
password-reset tokens and the email outbox (whose context may hold a link) are not exported.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from ...db import for_update
from ..errors import Conflict, NotFound
from ..models import (
    MONEY,
    Addon,
    Affiliate,
    BillableItem,
    Client,
    ClientExport,
    ClientFile,
    ClientGroup,
    ClientNote,
    ClientUser,
    Contact,
    CreditHistory,
    Currency,
    Domain,
    EmailLog,
    Invoice,
    InvoiceItem,
    Order,
    PayMethod,
    Quote,
    Service,
    Ticket,
    Transaction,
    User,
)
from ..money import round_money

FORMAT = "billingworker.client_export"
VERSION = 1

#: Worker bookkeeping on the client row that is not the client's data.
_PROFILE_EXCLUDED = frozenset({"failure_count", "parked_at", "parked_reason"})
#: Allowed columns only: a secret column added later is never exported by accident.
_USER_COLUMNS = ("id", "email", "first_name", "last_name", "security_question", "last_login_at", "created_at")
_PAY_METHOD_COLUMNS = ("id", "type", "description", "gateway_name", "card_type", "card_last_four", "card_expiry",
                       "is_default", "created_at")


@dataclass(frozen=True)
class ExportResult:
    client_id: int
    export_id: int
    filename: str
    size_bytes: int
    sha256: str
    #: "exported", or "already_exported" when this request key had written its file before.
    outcome: str

    def as_dict(self) -> dict:
        return {"client_id": self.client_id, "export_id": self.export_id, "filename": self.filename,
                "size_bytes": self.size_bytes, "sha256": self.sha256, "outcome": self.outcome}


def export_filename(client_id: int, request_key: str) -> str:
    """``client-<id>-<digest of the request key>.json``: the same request always names the same
    file, and a request key (any text a caller sent) never reaches the file system as is."""
    return f"client-{client_id}-{hashlib.sha256(request_key.encode()).hexdigest()[:24]}.json"


def export_client_data(session: Session, client_id: int, *, exports_dir: Path, request_key: str,
                       now: datetime) -> ExportResult:
    """Write the client's data to ``exports_dir`` and record it in ``client_exports``.

    Locks the client row, so the document is one consistent picture and two runs of the same
    request are serialised: the second finds the ``client_exports`` row (unique
    ``request_key``) and writes nothing. The file is written to a temporary name and renamed into
    place, so a reader never sees half a document; if the transaction then rolls back, a
    redelivery renames a new document over the same name. The caller commits.
    """
    client = session.execute(for_update(select(Client).where(Client.id == client_id))).scalar()
    if client is None:
        raise NotFound("client_id", client_id, "client")
    done = session.execute(select(ClientExport).where(ClientExport.request_key == request_key)).scalar()
    if done is not None:
        if done.client_id != client_id:
            raise Conflict(f"request key {request_key!r} already exported client {done.client_id}, "
                           f"not client {client_id}")
        return ExportResult(client_id, done.id, done.filename, done.size_bytes, done.sha256, "already_exported")
    data = json.dumps(client_document(session, client, now=now), indent=2, ensure_ascii=False).encode("utf-8")
    filename = export_filename(client_id, request_key)
    _write_atomically(Path(exports_dir), filename, data)
    digest = hashlib.sha256(data).hexdigest()
    export_id = session.execute(insert(ClientExport).values(
        client_id=client_id, filename=filename, size_bytes=len(data), sha256=digest, request_key=request_key,
        created_at=now)).inserted_primary_key[0]
    return ExportResult(client_id, export_id, filename, len(data), digest, "exported")


def client_document(session: Session, client: Client, *, now: datetime) -> dict[str, Any]:
    """The export document: JSON-ready (money as decimal strings, dates and times ISO 8601)."""
    cid = client.id
    currency = session.execute(select(Currency.code, Currency.minor_units)
                               .where(Currency.id == client.currency_id)).first()
    mu = currency.minor_units if currency is not None else 2
    profile = _row(client, mu, exclude=_PROFILE_EXCLUDED)
    profile["currency"] = currency.code if currency is not None else None
    profile["group"] = session.execute(select(ClientGroup.name).where(ClientGroup.id == client.group_id)).scalar()
    users = []
    for user, link in session.execute(select(User, ClientUser).join(ClientUser, ClientUser.user_id == User.id)
                                      .where(ClientUser.client_id == cid).order_by(User.id)):
        users.append({**_row(user, mu, only=_USER_COLUMNS), "is_owner": link.is_owner,
                      "permissions": link.permissions})
    items: dict[int, list[dict]] = {}
    for item in _all(session, InvoiceItem, cid):
        items.setdefault(item.invoice_id, []).append(_row(item, mu, exclude={"client_id", "invoice_id"}))
    invoices = [{**_row(inv, mu, exclude={"client_id"}), "items": items.get(inv.id, [])}
                for inv in _all(session, Invoice, cid)]
    affiliate = session.execute(select(Affiliate).where(Affiliate.client_id == cid)).scalar()
    return {
        "format": FORMAT,
        "version": VERSION,
        "generated_at": _json_value(now),
        "client_id": cid,
        "profile": profile,
        "contacts": _rows(session, Contact, cid, mu),
        "users": users,
        "pay_methods": [_row(pm, mu, only=_PAY_METHOD_COLUMNS) for pm in _all(session, PayMethod, cid)],
        "services": _rows(session, Service, cid, mu),
        "addons": _rows(session, Addon, cid, mu),
        "domains": _rows(session, Domain, cid, mu),
        "billable_items": _rows(session, BillableItem, cid, mu),
        "invoices": invoices,
        "transactions": _rows(session, Transaction, cid, mu),
        "credit_history": _rows(session, CreditHistory, cid, mu),
        "emails": _rows(session, EmailLog, cid, mu),
        "quotes": _rows(session, Quote, cid, mu),
        "orders": _rows(session, Order, cid, mu),
        "tickets": _rows(session, Ticket, cid, mu),
        "notes": _rows(session, ClientNote, cid, mu),
        "files": _rows(session, ClientFile, cid, mu),
        "affiliate": _row(affiliate, mu, exclude={"client_id"}) if affiliate is not None else None,
    }


def _all(session: Session, model, client_id: int) -> list:
    return list(session.execute(select(model).where(model.client_id == client_id).order_by(model.id)).scalars())


def _rows(session: Session, model, client_id: int, minor_units: int) -> list[dict]:
    return [_row(obj, minor_units, exclude={"client_id"}) for obj in _all(session, model, client_id)]


def _row(obj, minor_units: int, *, only: tuple[str, ...] | None = None,
         exclude: frozenset[str] | set[str] = frozenset()) -> dict:
    """One record as JSON values; money columns rounded to the client's currency ("10.00", not
    the stored "10.0000"), other decimals (tax rates) as stored."""
    table = obj.__table__
    columns = [c.key for c in table.columns] if only is None else list(only)
    out = {}
    for key in columns:
        if key in exclude:
            continue
        value = getattr(obj, key)
        if isinstance(value, bytes | bytearray | memoryview):
            continue  # binary columns hold encrypted data: never exported
        if isinstance(value, Decimal) and _is_money(table.c[key].type):
            value = round_money(value, minor_units)
        out[key] = _json_value(value)
    return out


def _is_money(column_type) -> bool:
    return (getattr(column_type, "precision", None), getattr(column_type, "scale", None)) == (
        MONEY.precision, MONEY.scale)


def _json_value(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def _write_atomically(directory: Path, filename: str, data: bytes) -> None:
    """Write ``data`` to ``directory/filename`` through a temporary file and a rename."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{filename}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, directory / filename)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
