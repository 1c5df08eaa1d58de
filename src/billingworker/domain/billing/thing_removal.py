"""Delete selected items (SPEC §9): remove the records of some of a client's things.

Records only: no server-module command runs (the account on the server stays as it is; an
admin who wants it gone sends ``terminate`` first). What hangs off a thing goes with it: a
deleted service takes its addons and its cancellation requests. The invoices that billed the
things keep their lines (``invoice_items`` has no foreign key to them: billing history stays),
and ``module_commands`` keeps what ran. The things' billed periods (``billed_periods``) are removed: they
guard a thing against being billed twice, and there is no thing left to guard.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ...db import for_update
from ...store.arrays import among
from ..errors import NotFound, ValidationError
from ..models import Addon, BilledPeriod, CancelRequest, ItemType
from .due_things import THING_TABLES
from .invoice_store import lock_clients

#: What an admin can select for deletion.
REMOVABLE_TYPES: tuple[str, ...] = (ItemType.SERVICE, ItemType.ADDON, ItemType.DOMAIN, ItemType.BILLABLE)


def selected_things(items: Any) -> list[tuple[str, int]]:
    """The selection as ``(type, id)`` pairs, in the order given: each item may be a pair or the
    jobs' ``{"type": ..., "id": ...}`` object (so a caller of the domain function can pass what
    the job takes). A malformed item is a ``ValidationError`` naming its index."""
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Sequence):
        raise ValidationError("items", items, 'must be a list of {"type": ..., "id": ...} objects')
    out = []
    for n, item in enumerate(items):
        if isinstance(item, Mapping) and set(item) == {"type", "id"}:
            kind, item_id = item["type"], item["id"]
        elif isinstance(item, Sequence) and not isinstance(item, str | bytes) and len(item) == 2:
            kind, item_id = item
        else:
            raise ValidationError(f"items[{n}]", item, 'must be an object {"type": ..., "id": ...}')
        if isinstance(item_id, bool) or not isinstance(item_id, int | str):
            raise ValidationError(f"items[{n}].id", item_id, "must be a positive integer id")
        try:
            number = int(item_id)
        except ValueError:
            raise ValidationError(f"items[{n}].id", item_id, "must be a positive integer id") from None
        if number <= 0:
            raise ValidationError(f"items[{n}].id", item_id, "must be a positive integer id")
        out.append((kind, number))
    return out


@dataclass
class RemovalResult:
    #: The selected things that were removed.
    deleted: list[tuple[str, int]] = field(default_factory=list)
    #: Addons removed with their service without being selected.
    addons_with_services: list[int] = field(default_factory=list)
    #: Selected things that no longer existed (a second run): not an error.
    already_gone: list[tuple[str, int]] = field(default_factory=list)

    def summary(self) -> dict:
        return {"deleted": [f"{t}:{i}" for t, i in self.deleted],
                "addons_with_services": self.addons_with_services,
                "already_gone": [f"{t}:{i}" for t, i in self.already_gone]}


def delete_selected_items(session: Session, client_id: int, items: Sequence[Any]) -> RemovalResult:
    """Remove the selected things of ``client_id``; the caller commits.

    Locks the client row, then the things (per type, in id order). A thing of another client is
    refused (``ValidationError``) before anything is deleted. ``items``: ``(type, id)`` pairs or
    ``{"type": ..., "id": ...}`` objects. Idempotent: a thing already gone is
    listed in ``already_gone``, so a second run deletes nothing and succeeds.
    """
    # Checked in the order given (so that "items[n]" names the sender's n-th item), done once each.
    requested = selected_things(items)
    wanted = list(dict.fromkeys(requested))
    for n, (item_type, _) in enumerate(requested):
        if item_type not in REMOVABLE_TYPES:
            raise ValidationError(f"items[{n}].type", item_type, f"is not one of {', '.join(REMOVABLE_TYPES)}")
    if lock_clients(session, [client_id]).get(client_id) is None:
        raise NotFound("client_id", client_id, "client")

    owners: dict[tuple[str, int], int] = {}
    for item_type in REMOVABLE_TYPES:
        ids = sorted(i for t, i in wanted if t == item_type)
        if ids:
            table = THING_TABLES[item_type]
            for row_id, owner in session.execute(for_update(
                    select(table.id, table.client_id).where(among(session, table.id, ids)).order_by(table.id))):
                owners[(item_type, row_id)] = owner
    for n, key in enumerate(requested):
        if owners.get(key, client_id) != client_id:
            raise ValidationError(f"items[{n}].id", key[1], f"is a {key[0]} of another client, not of client "
                                  f"{client_id}: nothing was deleted")
    result = RemovalResult()
    for key in wanted:
        (result.deleted if key in owners else result.already_gone).append(key)

    by_type: dict[str, list[int]] = {}
    for item_type, item_id in result.deleted:
        by_type.setdefault(item_type, []).append(item_id)
    services = by_type.get(ItemType.SERVICE, [])
    if services:
        chosen = set(by_type.get(ItemType.ADDON, []))
        hanging = list(session.scalars(for_update(
            select(Addon.id).where(among(session, Addon.service_id, services)).order_by(Addon.id))))
        result.addons_with_services = [a for a in hanging if a not in chosen]
        by_type[ItemType.ADDON] = sorted(chosen | set(hanging))
        session.execute(delete(CancelRequest).where(among(session, CancelRequest.service_id, services)))
    # Addons before services, so that no row is deleted through a cascade we did not count.
    for item_type in (ItemType.ADDON, ItemType.SERVICE, ItemType.DOMAIN, ItemType.BILLABLE):
        ids = by_type.get(item_type)
        if not ids:
            continue
        table = THING_TABLES[item_type]
        session.execute(delete(BilledPeriod).where(BilledPeriod.item_type == item_type,
                                                   among(session, BilledPeriod.item_id, ids)))
        session.execute(delete(table).where(among(session, table.id, ids)))
    return result


__all__ = ["REMOVABLE_TYPES", "RemovalResult", "delete_selected_items", "selected_things"]
