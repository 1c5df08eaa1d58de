"""Merging client A into client B (SPEC §12): every record of A moves to B, A's credit balance
is added to B's, A is removed; all in one transaction, refused when the currencies differ.

Which tables move is read from the models (``deletion.client_tables``: every table with a
``client_id``), so a table added later moves too; the few tables whose unique keys need care
(users, pay methods, affiliates) are handled here by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from ..errors import Conflict, NotFound, ValidationError
from ..models import Affiliate, Client, ClientMerge, ClientNote, ClientUser, Currency, PayMethod
from ..money import round_money, within_the_books
from .deletion import client_tables

SOURCE = "job:merge_clients"
#: Moved by hand below, because a plain UPDATE of client_id could break a unique key.
_SPECIAL_TABLES = frozenset({"client_users", "pay_methods", "affiliates"})


@dataclass
class MergeResult:
    source_client_id: int
    target_client_id: int
    #: "merged", or "already_merged" when a ``client_merges`` row says this merge was done.
    outcome: str
    #: Rows moved per table, and the credit added to the target (a decimal string).
    moved: dict[str, int | str] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"source_client_id": self.source_client_id, "target_client_id": self.target_client_id,
                "outcome": self.outcome, "moved": self.moved}


def merge_clients(session: Session, source_client_id: int, target_client_id: int, *,
                  as_of: date, now: datetime) -> MergeResult:
    """Move everything of the source client to the target client and delete the source.

    Locks both client rows in id order (two merges over the same pair, in either direction,
    never deadlock), so a concurrent twin waits, then finds the source gone and the
    ``client_merges`` row written: it answers "already_merged". Raises ``ValidationError`` when
    source and target are the same, ``NotFound`` for an unknown client, ``Conflict`` when the
    currencies differ (or the source was merged into another client). The caller commits.
    """
    if source_client_id == target_client_id:
        raise ValidationError("target_client_id", target_client_id, "must differ from source_client_id")
    rows = {c.id: c for c in session.execute(
        select(Client).where(Client.id.in_([source_client_id, target_client_id])).order_by(Client.id)
        .with_for_update().execution_options(populate_existing=True)).scalars()}
    source, target = rows.get(source_client_id), rows.get(target_client_id)
    if source is None:
        done = session.get(ClientMerge, source_client_id, populate_existing=True)
        if done is None:
            raise NotFound("source_client_id", source_client_id, "client")
        if done.target_client_id != target_client_id:
            raise Conflict(f"source_client_id {source_client_id} was already merged into client "
                           f"{done.target_client_id}, not {target_client_id}")
        return MergeResult(source_client_id, target_client_id, "already_merged", json.loads(done.moved))
    if target is None:
        done = session.get(ClientMerge, target_client_id, populate_existing=True)
        if done is not None:
            raise ValidationError("target_client_id", target_client_id,
                                  f"was merged into client {done.target_client_id} and no longer exists")
        raise NotFound("target_client_id", target_client_id, "client")
    if source.currency_id != target.currency_id:
        raise Conflict(f"client {source_client_id} (currency id {source.currency_id}) and client "
                       f"{target_client_id} (currency id {target.currency_id}) have different currencies: "
                       "convert one before merging")

    moved: dict[str, int | str] = {}
    moved["client_users"] = _move_users(session, source_client_id, target_client_id)
    moved["pay_methods"] = _move_pay_methods(session, source_client_id, target_client_id)
    moved["affiliates"] = _move_affiliate(session, source_client_id, target_client_id)
    # module_commands first: run_module_command locks a command row, then its thing's row (to
    # set its status); taking them in the same order here means a merge never deadlocks with it.
    for table in sorted(client_tables(), key=lambda t: t.name != "module_commands"):
        if table.name not in _SPECIAL_TABLES:
            moved[table.name] = session.execute(update(table).where(table.c.client_id == source_client_id)
                                                .values(client_id=target_client_id)).rowcount
    minor_units = session.execute(select(Currency.minor_units).where(Currency.id == target.currency_id)).scalar()
    credit = round_money(Decimal(source.credit_balance), 2 if minor_units is None else minor_units)
    if credit > 0:
        within_the_books("source_client_id", source_client_id, "the target's credit balance",
                         Decimal(target.credit_balance) + credit)
        # No new credit-history line: A's lines moved to B above and already account for this
        # amount, so B's history still sums to B's balance (a "+A" line would count it twice).
        # Both client rows are locked (see above).
        session.execute(update(Client).where(Client.id == target_client_id)
                        .values(credit_balance=Client.credit_balance + credit))
    moved["credit_added"] = str(credit)
    session.add(ClientNote(client_id=target_client_id, note=_merge_note(source), created_at=now))
    session.flush()
    session.execute(delete(Client).where(Client.id == source_client_id))
    moved = {k: v for k, v in moved.items() if v not in (0, None)}
    # Only reachable on SQLite, which may hand a merged-away id to a new client: the old record
    # gives way (PostgreSQL never reuses ids, so there it never exists while the source does).
    session.execute(delete(ClientMerge).where(ClientMerge.source_client_id == source_client_id))
    session.execute(insert(ClientMerge).values(source_client_id=source_client_id, target_client_id=target_client_id,
                                               moved=json.dumps(moved), merged_at=now))
    session.expunge(source)
    return MergeResult(source_client_id, target_client_id, "merged", moved)


def _merge_note(source: Client) -> str:
    """A dated note on the target keeps who the source was, and its admin notes (the profile's
    free text would otherwise go with the source row)."""
    name = " ".join(p for p in (source.first_name, source.last_name) if p) or "-"
    company = f", {source.company_name}" if source.company_name else ""
    note = f"Merged client #{source.id} ({name}{company}, {source.email}) into this client."
    return f"{note}\nIts admin notes:\n{source.notes}" if source.notes else note


def _move_users(session: Session, source_id: int, target_id: int) -> int:
    """Link the source's users to the target. A user already on the target keeps that link;
    the target's owner stays the owner (a moved owner becomes an ordinary user, unless the
    target had no owner)."""
    on_target = {uid: owner for uid, owner in session.execute(
        select(ClientUser.user_id, ClientUser.is_owner).where(ClientUser.client_id == target_id))}
    target_has_owner = any(on_target.values())
    moved = 0
    for link in session.execute(select(ClientUser).where(ClientUser.client_id == source_id)
                                .order_by(ClientUser.user_id)).scalars().all():
        if link.user_id in on_target:
            continue  # deleted with the source's client_users rows below
        session.add(ClientUser(client_id=target_id, user_id=link.user_id,
                               is_owner=link.is_owner and not target_has_owner, permissions=link.permissions))
        target_has_owner = target_has_owner or link.is_owner
        moved += 1
    session.flush()
    session.execute(delete(ClientUser).where(ClientUser.client_id == source_id))
    return moved


def _move_pay_methods(session: Session, source_id: int, target_id: int) -> int:
    """Move the source's pay methods; the target keeps its default (one default per client)."""
    target_default = session.execute(select(PayMethod.id).where(
        PayMethod.client_id == target_id, PayMethod.is_default.is_(True))).first()
    if target_default is not None:
        session.execute(update(PayMethod).where(PayMethod.client_id == source_id, PayMethod.is_default.is_(True))
                        .values(is_default=False))
    return session.execute(update(PayMethod).where(PayMethod.client_id == source_id)
                           .values(client_id=target_id)).rowcount


def _move_affiliate(session: Session, source_id: int, target_id: int) -> int:
    """One affiliate account per client: the source's moves if the target has none, else its
    visitors, balance and withdrawals are added to the target's and it is removed."""
    theirs = session.execute(select(Affiliate).where(Affiliate.client_id == source_id)).scalar()
    if theirs is None:
        return 0
    ours = session.execute(select(Affiliate).where(Affiliate.client_id == target_id).with_for_update()).scalar()
    if ours is None:
        theirs.client_id = target_id
    else:
        ours.visitors += theirs.visitors
        ours.balance = Decimal(ours.balance) + Decimal(theirs.balance)
        ours.withdrawn = Decimal(ours.withdrawn) + Decimal(theirs.withdrawn)
        session.delete(theirs)
    session.flush()
    return 1
