"""Server-module commands (SPEC §9): decided in a billing transaction, run once after it commits.

The ``module_commands`` table is the outbox of the ``run_module_command`` job: a job that
decides a command (mass update, or an app asking for one) writes a ``queued`` row in its own
transaction, keyed by ``request_key``; after the commit a message names the row's id, and
``run_module_command`` runs it under the row's lock:

    queued --(row locked, module called, outcome committed with it)--> succeeded | failed

A second message for the same row waits on the lock and then finds it ``succeeded`` (skipped).
A crash during the call rolls back to ``queued``: the message is redelivered (or the relay
re-enqueues it) and the module is asked again with the same idempotency key. A row is never
left ``running``: that status only exists inside the transaction that holds the lock.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ...db import for_update
from ...store.arrays import among
from ...store.conflicts import insert_ignoring_conflicts
from ..errors import NotFound, ValidationError
from ..models import Addon, Domain, ItemType, ModuleCommand, ModuleCommandStatus, Product, Service, ThingStatus
from ..ports import MODULE_COMMANDS, ModuleCommandRequest, ModuleResult, ServerModule
from ..redaction import escape_unprintable
from .sealing import ParamSealer, public_params

#: Things a server module acts on: a service's product module, an addon's (its service's), a
#: domain's registrar.
MODULE_ITEM_TYPES: tuple[str, ...] = (ItemType.SERVICE, ItemType.ADDON, ItemType.DOMAIN)
#: ``module_params`` serialised may be at most this long.
MAX_PARAMS_CHARS = 10_000
#: What the module said is kept up to this length.
MAX_RESULT_CHARS = 2_000
#: The status a service or addon takes when its module command succeeded, as WHMCS's module
#: buttons do (change package / change password leave it as it is). Domains keep theirs: a
#: registrar's answer says nothing about the registration's billing status.
STATUS_AFTER_COMMAND: dict[str, str] = {
    "create": ThingStatus.ACTIVE,
    "suspend": ThingStatus.SUSPENDED,
    "unsuspend": ThingStatus.ACTIVE,
    "terminate": ThingStatus.TERMINATED,
}


def parse_module_command(field: str, value: Any) -> str:
    if not isinstance(value, str) or value.strip() not in MODULE_COMMANDS:
        raise ValidationError(field, value, f"is not a module command (one of {', '.join(MODULE_COMMANDS)})")
    return value.strip()


def parse_module_params(field: str, value: Any) -> dict[str, Any]:
    """A JSON object of parameters for the module; ``None`` is ``{}``. A secret (a key naming a
    password, secret, token, API key..., at any depth) is accepted: it is stored only sealed."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError(field, value, "must be a JSON object")
    for key in value:
        if not isinstance(key, str):
            raise ValidationError(field, key, "has a key that is not a string")
    public_params(value)  # bounds the nesting; secrets are sealed when the command is queued
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        raise ValidationError(field, value, "must contain only JSON values") from None
    if len(text) > MAX_PARAMS_CHARS:
        raise ValidationError(field, text[:40] + "...", f"is longer than {MAX_PARAMS_CHARS} characters as JSON")
    return value


@dataclass(frozen=True)
class QueuedCommand:
    """A ``module_commands`` row to run: what the ``run_module_command`` message carries."""

    command_id: int
    item_type: str
    item_id: int
    command: str

    def message(self) -> dict[str, Any]:
        """The keyword arguments of its ``run_module_command`` message."""
        return {"item_type": self.item_type, "item_id": self.item_id, "command": self.command,
                "command_id": self.command_id}


@dataclass(frozen=True)
class NewCommand:
    item_type: str
    item_id: int
    client_id: int | None
    command: str
    params: Mapping[str, Any]
    #: Unique per command: the deciding job's run-once key plus the thing, e.g.
    #: "mass_update:message:<id>:service:12".
    request_key: str


def default_sealer() -> ParamSealer:
    """Sealing keyed by SECRET_KEY (sealing), opening with its fallbacks too."""
    from ...config import get_config

    return ParamSealer(get_config().secret_keys())


def _utc(now: datetime) -> datetime:
    if now.tzinfo is None:
        raise ValidationError("now", now, "must be timezone-aware")
    # SQLite keeps timestamps as naive text: store and compare them in UTC everywhere.
    return now.astimezone(UTC)


def queue_module_commands(session: Session, commands: Sequence[NewCommand], *, now: datetime,
                          sealer: ParamSealer | None = None) -> list[QueuedCommand]:
    """Write ``queued`` rows in the caller's transaction; returns them in the order given.

    Secret parameters are stored only sealed (``sealing.py``; ``sealer`` defaults to one keyed by
    SECRET_KEY and its fallbacks).

    Idempotent per ``request_key`` (unique index): a key already written is not written again and
    its existing row is returned, so a redelivered job never queues a command twice.
    """
    if not commands:
        return []
    rows = []
    for c in commands:
        shown, secret = public_params(c.params)
        if secret:
            sealer = sealer or default_sealer()
        rows.append({"client_id": c.client_id, "item_type": c.item_type, "item_id": c.item_id, "command": c.command,
                     "params": json.dumps(shown, sort_keys=True),
                     "sealed_params": sealer.seal(c.params) if secret and sealer else None,
                     "request_key": c.request_key, "status": ModuleCommandStatus.QUEUED, "attempts": 0, "result": "",
                     "created_at": _utc(now)})
    session.execute(insert_ignoring_conflicts(session, ModuleCommand, index_elements=["request_key"]), rows)
    keys = [c.request_key for c in commands]
    found = {r.request_key: r for r in session.execute(
        select(ModuleCommand.id, ModuleCommand.request_key, ModuleCommand.item_type, ModuleCommand.item_id,
               ModuleCommand.command).where(among(session, ModuleCommand.request_key, keys)))}
    return [QueuedCommand(found[k].id, found[k].item_type, found[k].item_id, found[k].command) for k in keys]


def record_module_command(session: Session, item_type: str, item_id: int, command: str,
                          params: Mapping[str, Any] | None, *, request_key: str, now: datetime) -> QueuedCommand:
    """Queue one command an application asked for directly; once per ``request_key``.

    Refuses an unknown thing (``NotFound``) and a bad type or command (``ValidationError``).
    """
    if item_type not in MODULE_ITEM_TYPES:
        raise ValidationError("item_type", item_type, f"is not one of {', '.join(MODULE_ITEM_TYPES)}")
    command = parse_module_command("command", command)
    params = parse_module_params("params", params)
    existing = session.execute(select(ModuleCommand.id, ModuleCommand.item_type, ModuleCommand.item_id,
                                      ModuleCommand.command).where(ModuleCommand.request_key == request_key)).first()
    if existing is not None:
        return QueuedCommand(*existing)
    table = {ItemType.SERVICE: Service, ItemType.ADDON: Addon, ItemType.DOMAIN: Domain}[item_type]
    client_id = session.execute(select(table.client_id).where(table.id == item_id)).scalar()
    if client_id is None:
        raise NotFound("item_id", item_id, item_type)
    [queued] = queue_module_commands(session, [NewCommand(item_type, item_id, client_id, command, params,
                                                          request_key)], now=now)
    return queued


@dataclass(frozen=True)
class ModuleRun:
    command_id: int
    #: succeeded | failed | skipped (already succeeded: a second delivery)
    outcome: str
    message: str = ""
    client_id: int | None = None


@dataclass(frozen=True)
class _Target:
    client_id: int
    module: str
    domain: str
    username: str


def _target(session: Session, item_type: str, item_id: int) -> _Target | None:
    """The thing's account and module, or None if the thing no longer exists."""
    if item_type == ItemType.DOMAIN:
        row = session.execute(select(Domain.client_id, Domain.registrar, Domain.domain)
                              .where(Domain.id == item_id)).first()
        return _Target(row.client_id, row.registrar or "", row.domain, "") if row else None
    service_id = item_id
    if item_type == ItemType.ADDON:
        # An addon is provisioned through its service's module and account.
        service_id = session.execute(select(Addon.service_id).where(Addon.id == item_id)).scalar()
        if service_id is None:
            return None
    row = session.execute(
        select(Service.client_id, Service.domain, Service.username, Product.module)
        .outerjoin(Product, Product.id == Service.product_id).where(Service.id == service_id)).first()
    return _Target(row.client_id, row.module or "", row.domain, row.username) if row else None


def run_queued_command(session: Session, command_id: int, *, module_for: Callable[[str], ServerModule],
                       now: datetime, expect: tuple[str, int, str] | None = None,
                       as_of: date | None = None, sealer: ParamSealer | None = None) -> ModuleRun:
    """Run one queued command through its module; the caller commits.

    Locks the row for the whole call, so two deliveries never run it at once; a row that already
    succeeded is skipped (a failed one runs again: a requeued dead letter means "try again").
    A refusal of the module, a thing that no longer exists or a module nobody registered mark
    the row ``failed`` (not retried). An exception of the module propagates: the caller rolls
    back (the row stays ``queued``) and records it with ``record_module_error``.
    ``expect`` = (item type, item id, command) the message named; a mismatch is bad input.
    A command that succeeded on a service or addon sets its status (``STATUS_AFTER_COMMAND``:
    suspend → Suspended, unsuspend and create → Active, terminate → Terminated, dated ``as_of``
    on a service without a termination date), in the transaction that records the success.
    """
    row = session.execute(for_update(select(ModuleCommand).where(ModuleCommand.id == command_id))).scalar()
    if row is None:
        raise NotFound("command_id", command_id, "module command")
    if expect is not None and (row.item_type, row.item_id, row.command) != expect:
        raise ValidationError("command_id", command_id, f"is {row.command} of {row.item_type} {row.item_id}, "
                              f"not {expect[2]} of {expect[0]} {expect[1]}")
    if row.status == ModuleCommandStatus.SUCCEEDED:
        return ModuleRun(row.id, "skipped", row.result, row.client_id)
    target = _target(session, row.item_type, row.item_id)
    if target is None:
        return _finish(row, ModuleResult("failed", f"{row.item_type} {row.item_id} no longer exists"), now)
    try:
        module = module_for(target.module)
    except ValidationError as exc:
        return _finish(row, ModuleResult("failed", f"module {target.module!r} {exc.rule}"), now)
    row.status = ModuleCommandStatus.RUNNING
    row.attempts += 1
    session.flush()
    params = (sealer or default_sealer()).unseal(row.sealed_params) if row.sealed_params else json.loads(
        row.params or "{}")
    answer = module.run(ModuleCommandRequest(
        command_id=row.id, idempotency_key=f"module-command-{row.id}", item_type=row.item_type,
        item_id=row.item_id, client_id=target.client_id, command=row.command, module=target.module,
        domain=target.domain, username=target.username, params=params))
    if answer.succeeded:
        _take_status(session, row.item_type, row.item_id, row.command, as_of)
    return _finish(row, answer, now)


def _take_status(session: Session, item_type: str, item_id: int, command: str, as_of: date | None) -> None:
    """The thing shows what its server now says (a suspended account is Suspended). Locks the
    thing's row after the command row, never the other way round: no job holds a thing's lock
    while it waits for a command row."""
    status = STATUS_AFTER_COMMAND.get(command)
    if status is None or item_type not in (ItemType.SERVICE, ItemType.ADDON):
        return
    table = Service if item_type == ItemType.SERVICE else Addon
    session.execute(update(table).where(table.id == item_id).values(status=status))
    if table is Service and status == ThingStatus.TERMINATED and as_of is not None:
        session.execute(update(Service).where(Service.id == item_id, Service.termination_date.is_(None))
                        .values(termination_date=as_of))


def _finish(row: ModuleCommand, answer: ModuleResult, now: datetime) -> ModuleRun:
    row.status = ModuleCommandStatus.SUCCEEDED if answer.succeeded else ModuleCommandStatus.FAILED
    row.sealed_params = None  # the command ran: its secrets are no longer kept
    row.result = escape_unprintable(answer.message)[:MAX_RESULT_CHARS]  # (a module's words: NUL, ESC...)
    row.finished_at = _utc(now)
    return ModuleRun(row.id, answer.status, answer.message, row.client_id)


def record_module_error(session: Session, command_id: int, error: str, *, give_up: bool, now: datetime) -> None:
    """Count a failed attempt (the module raised); with ``give_up`` the row becomes ``failed``.

    Written in its own transaction after the attempt's rolled back. A row that succeeded
    meanwhile (a twin) is left alone.
    """
    row = session.execute(for_update(select(ModuleCommand).where(ModuleCommand.id == command_id))).scalar()
    if row is None or row.status == ModuleCommandStatus.SUCCEEDED:
        return
    row.attempts += 1
    row.result = error[:MAX_RESULT_CHARS]
    if give_up:
        row.status = ModuleCommandStatus.FAILED
        row.finished_at = _utc(now)
        row.sealed_params = None
    else:
        row.status = ModuleCommandStatus.QUEUED


def pending_module_command_ids(session: Session, *, created_before: datetime, limit: int = 1000) -> list[int]:
    """Ids of ``queued`` rows created before ``created_before``, oldest first. Reads only.

    For the relay: a row still queued a while after its transaction committed lost its
    message (a crash between the commit and the enqueue). Failed rows are not returned.
    """
    cutoff = _utc(created_before)
    return list(session.scalars(
        select(ModuleCommand.id)
        .where(ModuleCommand.status == ModuleCommandStatus.QUEUED, ModuleCommand.created_at < cutoff)
        .order_by(ModuleCommand.created_at, ModuleCommand.id).limit(limit)))


def queued_commands(session: Session, command_ids: Sequence[int]) -> list[QueuedCommand]:
    """The rows ``command_ids`` as messages to send, in id order."""
    if not command_ids:
        return []
    rows = session.execute(select(ModuleCommand.id, ModuleCommand.item_type, ModuleCommand.item_id,
                                  ModuleCommand.command)
                           .where(among(session, ModuleCommand.id, command_ids)).order_by(ModuleCommand.id))
    return [QueuedCommand(*r) for r in rows]
