"""Removing a stored pay method (SPEC §12, issue 12).

A card or bank account stored **at a gateway** (``RemoteCreditCard``/``RemoteBankAccount`` with a
``gateway_token``) is deleted there first; our record goes only when the gateway agrees. When the
gateway refuses, or is not active (no such gateway, or the test gateway in production), the
record stays and ``pay_methods.removal_error`` / ``removal_attempted_at`` say why, for the admin
panel and the operators. ``force`` deletes our record without any remote call. A method stored
**locally** (encrypted card or bank data) is simply erased.

The default moves to the first remaining pay method in the profile's order, or to none. There
is no order column: the profile (like the export) lists a client's pay methods by ``id``, i.e.
the order they were added, so that is the order used here.

At-least-once: the record's absence is the "already done" answer. A ``job_receipts`` row keyed
``remove_pay_method:pay_method:<id>``, written in the removing transaction, tells a second run
"already_removed" from an id that never existed ("not_found"); neither is an error. The gateway
may be asked twice for one token (a retry after a lost answer, or after our commit failed); its
contract (``adapters/gateway.py``) makes that harmless: a token it no longer knows is "deleted".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy import Select, delete, select, update
from sqlalchemy.orm import Session

from ...db import for_update
from ..errors import BillingError, Conflict, ValidationError
from ..models import Client, JobReceipt, PayMethod
from ..ports import PaymentGateway, PayMethodDeletionRequest
from ..redaction import escape_unprintable, redact_card_numbers

ACTOR = "remove_pay_method"
#: Pay-method types whose card or account lives at a gateway (we hold its token only).
REMOTE_TYPES = ("RemoteCreditCard", "RemoteBankAccount")
#: Longest message kept in ``pay_methods.removal_error``, in characters.
MAX_MESSAGE_LENGTH = 2000

GatewayFor = Callable[[str], PaymentGateway]


class GatewayCallFailed(BillingError):
    """The gateway raised (unreachable, timed out): the outcome at the gateway is unknown or
    nothing was done, and nothing of ours changed. Transient: the caller records ``message``
    (``record_removal_error``, in a transaction of its own) and retries; asking again is safe."""

    def __init__(self, pay_method_id: int, message: str) -> None:
        self.pay_method_id = pay_method_id
        self.message = message
        super().__init__(f"pay method {pay_method_id}: {message}")


@dataclass(frozen=True)
class GatewayAnswer:
    #: deleted | refused | not_active | not_needed (nothing is stored at a gateway)
    remote: str
    message: str = ""


@dataclass
class PayMethodRemoval:
    pay_method_id: int
    #: removed | kept (the gateway refused or is not active: see ``message``) |
    #: already_removed (a receipt says it was removed before) | not_found (never seen)
    outcome: str
    client_id: int | None = None
    #: What happened at the gateway: deleted | refused | not_active | not_needed (a local method,
    #: or one without token: no remote call) | not_run (``force``: nothing was run remotely).
    remote: str | None = None
    message: str = ""
    #: The removed method was the client's default.
    was_default: bool = False
    #: The client's default after the removal, when ``was_default`` (None: no pay method left).
    new_default_id: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def removal_key(pay_method_id: int) -> str:
    """The ``job_receipts`` key that remembers a pay method was removed (and how)."""
    return f"{ACTOR}:pay_method:{pay_method_id}"


def is_stored_at_gateway(pay_method: PayMethod) -> bool:
    return pay_method.type in REMOTE_TYPES and bool(pay_method.gateway_token)


def remove_pay_method(session: Session, pay_method_id: int, *, gateway_for: GatewayFor, force: bool = False,
                      now: datetime) -> PayMethodRemoval:
    """Remove one stored pay method, asking its gateway first unless ``force``.

    Locks the client row, then the pay method (the order of every billing job, so a card capture
    of the same client waits or is waited for), and holds both during the gateway call. A
    refusal or an inactive gateway keeps the record and writes ``removal_error`` (outcome
    "kept", not an exception: the message is done). Raises ``GatewayCallFailed`` when the
    gateway raised: nothing changed, the caller records the message and retries. Idempotent
    (see the module). The caller commits.
    """
    pay_method = _lock(session, pay_method_id)
    if pay_method is None:
        return _not_there(session, pay_method_id)
    result = PayMethodRemoval(pay_method_id, "removed", client_id=pay_method.client_id)
    if force and is_stored_at_gateway(pay_method):
        result.remote = "not_run"
        result.message = (f"forced: our record was deleted without asking {pay_method.gateway_name!r}; "
                          "the token may still exist there")
    else:
        answer = ask_gateway_to_delete(pay_method, gateway_for)
        result.remote, result.message = answer.remote, answer.message
        if answer.remote in ("refused", "not_active"):
            pay_method.removal_error = answer.message
            pay_method.removal_attempted_at = now
            session.flush()
            result.outcome = "kept"
            return result
    erase_pay_method(session, pay_method, result)
    remember_removal(session, result, now=now)
    return result


def ask_gateway_to_delete(pay_method: PayMethod, gateway_for: GatewayFor) -> GatewayAnswer:
    """Ask the pay method's gateway to delete it; "not_needed" for a method stored locally.

    An unknown or switched-off gateway is "not_active" (a setting, not bad input: the record
    stays and says so). Raises ``GatewayCallFailed`` when the gateway raised.
    """
    if not is_stored_at_gateway(pay_method):
        return GatewayAnswer("not_needed")
    name = pay_method.gateway_name
    try:
        gateway = gateway_for(name)
    except ValidationError as exc:
        return GatewayAnswer("not_active", _said(f"gateway {name!r} is not active: {exc.rule}"))
    delete_at_gateway = getattr(gateway, "delete_pay_method", None)
    if delete_at_gateway is None:
        return GatewayAnswer("refused", f"gateway {name!r} cannot delete stored pay methods")
    request = PayMethodDeletionRequest(idempotency_key=f"remove-pay-method-{pay_method.id}",
                                       pay_method_id=pay_method.id, token=pay_method.gateway_token,
                                       pay_method_type=pay_method.type, last_four=pay_method.card_last_four)
    try:
        answer = delete_at_gateway(request)
    except Exception as exc:  # noqa: BLE001 - any gateway failure is transient here; asking again is safe
        raise GatewayCallFailed(pay_method.id, _said(f"{name}: {type(exc).__name__}: {exc}")) from exc
    return GatewayAnswer(answer.status, _said(answer.message or answer.status))


def erase_pay_method(session: Session, pay_method: PayMethod, result: PayMethodRemoval) -> None:
    """Delete the (locked) record; if it was the default, the first remaining method in the
    profile's order (``id``) becomes the default. The old default goes first, so the unique
    index "one default per client" never sees two."""
    client_id = pay_method.client_id
    result.was_default = bool(pay_method.is_default)
    session.execute(delete(PayMethod).where(PayMethod.id == pay_method.id))
    session.expunge(pay_method)
    if result.was_default:
        result.new_default_id = session.scalar(
            select(PayMethod.id).where(PayMethod.client_id == client_id).order_by(PayMethod.id).limit(1))
        if result.new_default_id is not None:
            session.execute(update(PayMethod).where(PayMethod.id == result.new_default_id).values(is_default=True))


def remember_removal(session: Session, result: PayMethodRemoval, *, now: datetime) -> None:
    """Write (or, for an id SQLite handed out again, overwrite) the removal receipt."""
    key = removal_key(result.pay_method_id)
    payload = json.dumps(result.as_dict())
    if session.execute(update(JobReceipt).where(JobReceipt.key == key).values(result=payload,
                                                                            created_at=now)).rowcount:
        return
    session.add(JobReceipt(key=key, actor=ACTOR, result=payload, created_at=now))
    session.flush()


def record_removal_error(session: Session, pay_method_id: int, message: str, *, now: datetime) -> bool:
    """Write why a removal did not happen (a gateway that raised) on the record; False when the
    record is gone. For the caller's own transaction after ``GatewayCallFailed``."""
    done = session.execute(update(PayMethod).where(PayMethod.id == pay_method_id).values(
        removal_error=_said(message), removal_attempted_at=now))
    return done.rowcount == 1


def client_of(pay_method_id: int) -> Select:
    """The statement reading a pay method's client id (for the failure record)."""
    return select(PayMethod.client_id).where(PayMethod.id == pay_method_id)


def _lock(session: Session, pay_method_id: int) -> PayMethod | None:
    """The pay method, locked after its client's row; None when it is gone. A method that moved
    to another client meanwhile (a merge) is looked up again under the new client's lock."""
    for _ in range(3):
        client_id = session.scalar(select(PayMethod.client_id).where(PayMethod.id == pay_method_id))
        if client_id is None:
            return None
        session.execute(for_update(select(Client.id).where(Client.id == client_id)))
        pay_method = session.execute(for_update(select(PayMethod).where(PayMethod.id == pay_method_id))).scalar()
        if pay_method is None or pay_method.client_id == client_id:
            return pay_method
    raise Conflict(f"pay method {pay_method_id} keeps moving between clients: try again")


def _not_there(session: Session, pay_method_id: int) -> PayMethodRemoval:
    receipt = session.execute(select(JobReceipt.result).where(JobReceipt.key == removal_key(pay_method_id))).scalar()
    if receipt is None:
        return PayMethodRemoval(pay_method_id, "not_found")
    before = json.loads(receipt)
    return PayMethodRemoval(pay_method_id, "already_removed", client_id=before.get("client_id"),
                            remote=before.get("remote"), message=before.get("message", ""))


def _said(text: str) -> str:
    """A gateway's words as we keep them: card numbers masked, cut to MAX_MESSAGE_LENGTH."""
    text = escape_unprintable(redact_card_numbers(str(text)))
    return text if len(text) <= MAX_MESSAGE_LENGTH else text[:MAX_MESSAGE_LENGTH - 3] + "..."
