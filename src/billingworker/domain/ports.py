"""The domain's ports: what it needs from the outside world, as Protocols the adapters implement.

The domain depends on these and never on ``billingworker.adapters``: a mail transport
(``Mailer``), a payment gateway (``PaymentGateway``) and a server module (``ServerModule``), with
the values that cross each seam. The contract each keeps (idempotency keys, what an exception
means) is written in its adapter module: ``adapters/mailer.py``, ``adapters/gateway.py``,
``adapters/server_module.py``.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from email.message import Message
from typing import Any, Literal, Protocol

from .errors import BillingError, ValidationError


class Mailer(Protocol):
    def send(self, message: Message) -> None:
        """Hand ``message`` over for delivery; raise if it was not accepted."""
        ...


def send_each(mailer: Mailer, messages: Sequence[Message]) -> Iterator[BaseException | None]:
    """Send ``messages`` in order, yielding for each None (accepted) or the error (not sent).

    A generator, so that the caller records each outcome (commits the ``sent`` mark) before the
    next message goes, and may stop early: closing it sends nothing more. Uses the mailer's
    ``send_each`` when it has one (one SMTP connection for the whole run), else ``send``.
    Never raises for a refused message.
    """
    own = getattr(mailer, "send_each", None)
    if own is not None:
        yield from own(messages)
        return
    for message in messages:
        try:
            mailer.send(message)
        except Exception as exc:  # noqa: BLE001 - reported per message
            yield exc
        else:
            yield None



CaptureOutcome = Literal["succeeded", "declined", "error"]
CAPTURE_OUTCOMES: tuple[str, ...] = ("succeeded", "declined", "error")


class GatewayUnavailable(BillingError):
    """The gateway could not be reached and charged nothing; the attempt may be retried."""


@dataclass(frozen=True)
class CaptureRequest:
    """Charge ``amount`` (in ``currency``, major units) to the stored card ``token``.

    ``token`` is the gateway's reference to the card (never a card number); it is left out of
    ``repr`` so that a logged request does not carry it.
    """

    idempotency_key: str
    amount: Decimal
    currency: str
    token: str = field(repr=False)
    last_four: str
    description: str


@dataclass(frozen=True)
class CaptureResult:
    #: succeeded | declined | error
    status: CaptureOutcome
    #: The gateway's id for the charge (or the declined attempt); "" if it gave none.
    transaction_id: str
    #: What the gateway said, for the operator: "card declined", "insufficient funds" ...
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in CAPTURE_OUTCOMES:
            raise ValidationError("status", self.status, f"must be one of {', '.join(CAPTURE_OUTCOMES)}")


PayMethodDeletionOutcome = Literal["deleted", "refused"]
PAY_METHOD_DELETION_OUTCOMES: tuple[str, ...] = ("deleted", "refused")


@dataclass(frozen=True)
class PayMethodDeletionRequest:
    """Delete the card or bank account the gateway stores as ``token`` (SPEC §12).

    ``idempotency_key`` (``remove-pay-method-<pay method id>``) is the same for every attempt;
    ``token`` is left out of ``repr`` so that a logged request does not carry it.
    """

    idempotency_key: str
    pay_method_id: int
    token: str = field(repr=False)
    #: RemoteCreditCard or RemoteBankAccount.
    pay_method_type: str
    last_four: str = ""


@dataclass(frozen=True)
class PayMethodDeletionResult:
    #: deleted (also: the gateway no longer knows the token) | refused (it keeps it, and says why)
    status: PayMethodDeletionOutcome
    #: What the gateway said, for the operator and the admin panel.
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in PAY_METHOD_DELETION_OUTCOMES:
            raise ValidationError("status", self.status, f"must be one of {', '.join(PAY_METHOD_DELETION_OUTCOMES)}")


class PaymentGateway(Protocol):
    name: str

    def capture(self, request: CaptureRequest) -> CaptureResult:
        """Charge the card once per idempotency key; the contract is in ``adapters/gateway.py``."""
        ...

    def delete_pay_method(self, request: PayMethodDeletionRequest) -> PayMethodDeletionResult:
        """Delete a stored card or bank account; deleting one already gone answers ``deleted``
        (the contract is in ``adapters/gateway.py``)."""
        ...



#: The commands an admin can run (SPEC §9), as stored in ``module_commands.command``.
MODULE_COMMANDS: tuple[str, ...] = ("create", "suspend", "unsuspend", "terminate", "change_package",
                                    "change_password")

ModuleOutcome = Literal["succeeded", "failed"]
MODULE_OUTCOMES: tuple[str, ...] = ("succeeded", "failed")


class ModuleUnavailable(BillingError):
    """The server could not be reached and nothing was done; the command may be retried."""


@dataclass(frozen=True)
class ModuleCommandRequest:
    """One command for one thing's account on its server."""

    #: ``module_commands.id``.
    command_id: int
    #: The same for every attempt of this command (``module-command-<id>``).
    idempotency_key: str
    #: service, addon or domain.
    item_type: str
    item_id: int
    client_id: int | None
    #: One of ``MODULE_COMMANDS``.
    command: str
    #: The module's registered name ('' for none).
    module: str
    #: The account on the server: the service's domain and username ('' when there is none).
    domain: str = ""
    username: str = ""
    #: The command's parameters, secrets included (unsealed for this call only): not in the repr.
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class ModuleResult:
    #: succeeded | failed
    status: ModuleOutcome
    #: What the module said, for the operator.
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in MODULE_OUTCOMES:
            raise ValidationError("status", self.status, f"must be one of {', '.join(MODULE_OUTCOMES)}")

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"


class ServerModule(Protocol):
    name: str

    def run(self, command: ModuleCommandRequest) -> ModuleResult:
        """Carry out the command; the contract is in ``adapters/server_module.py``."""
        ...
