"""Payment gateways: one seam, ``PaymentGateway.capture(request)`` and
``PaymentGateway.delete_pay_method(request)``, and a registry by name.

- ``TestGateway`` (``"testgateway"``): deterministic by card, in memory; the twin used by tests
  and the demo. Its process-wide instance is ``TEST_GATEWAY``. It approves without moving any
  money, so ``gateway_for("testgateway")`` refuses it unless the environment switches it on
  explicitly: ``PAYMENT_GATEWAYS=test`` (``config.payment_gateways``; the test suite, the demo
  and the benchmarks set it, production never does). A pay method naming it in production is
  then an unusable gateway like any unknown name: nothing is charged, nothing is marked paid.
- ``gateway_for(name)`` returns the gateway a pay method names (``PayMethod.gateway_name``).

The contract every gateway keeps:

- ``capture`` charges ``request.amount`` to the stored card ``request.token`` **at most once per
  ``request.idempotency_key``**: a second call with the same key returns the first answer and
  charges nothing. The capture job relies on it to recover from a crash (it asks again with the
  same key) and to let two workers race safely.
- A decline is an answer, not an exception: ``CaptureResult(status="declined", ...)``.
- ``GatewayUnavailable`` means the gateway could not be reached and **nothing was charged**
  (connection refused, DNS failure, a documented "not processed" reply). The attempt is recorded
  as ``error`` and retried on the schedule with a new key.
- Any other exception means the outcome is unknown (a timeout after the request was sent): the
  attempt stays ``pending`` and the next run asks again with the same key. Never turn an
  ambiguous failure into ``GatewayUnavailable``: a retry with a new key could charge twice.
- Card numbers are never logged, stored or put in a message; only the last four digits. Pass
  gateway messages through ``domain.redaction.redact_card_numbers`` if the gateway might echo one.

What ``delete_pay_method`` (removing a stored card or bank account, SPEC §12) keeps:

- **Deleting a token the gateway no longer knows answers ``deleted``**, not an error: so asking
  twice for the same token (a redelivered ``remove_pay_method``, a retry after a timeout whose
  deletion did happen) is harmless, and our record goes the second time. Map the gateway's "no
  such customer / payment method" reply to ``deleted``.
- A gateway that keeps the method on purpose (still used by a subscription, a mandate...)
  answers ``PayMethodDeletionResult("refused", message)``: our record stays and shows the message.
- ``GatewayUnavailable`` (nothing done) and any other exception (outcome unknown) are transient:
  the job records the message and is retried; thanks to the first rule a retry is always safe.

Adding a real gateway is one class and one line::

    class StripeGateway:
        name = "stripe"

        def __init__(self, api_key: str) -> None: ...

        def capture(self, request: CaptureRequest) -> CaptureResult:
            # POST /v1/payment_intents with Idempotency-Key: request.idempotency_key,
            # amount in minor units, confirm=true, payment_method=request.token ...
            ...

        def delete_pay_method(self, request: PayMethodDeletionRequest) -> PayMethodDeletionResult:
            # POST /v1/payment_methods/{request.token}/detach; "resource_missing" -> deleted
            ...

    register_gateway("stripe", lambda: StripeGateway(os.environ["STRIPE_API_KEY"]))

The name is the ``gateway_name`` that pay methods store; it is also the ``gateway`` of the
transactions the payments record. A factory only builds the object (it is called while the
capture job holds the clients' locks): no network calls until ``capture``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from billingworker.config import payment_gateways
from billingworker.domain.errors import ValidationError
from billingworker.domain.ports import (
    CaptureRequest,
    CaptureResult,
    GatewayUnavailable,
    PaymentGateway,
    PayMethodDeletionRequest,
    PayMethodDeletionResult,
)


@dataclass(frozen=True)
class Charge:
    """A charge the ``TestGateway`` made (no token, no card number)."""

    idempotency_key: str
    transaction_id: str
    amount: Decimal
    currency: str
    last_four: str


class TestGateway:
    """Deterministic by card, in memory, thread-safe.

    The last four digits of the token (or, if the token does not end in digits, ``last_four``)
    decide: ``0002`` is declined ("card declined"), ``0119`` raises ``GatewayUnavailable`` (a
    transient failure, nothing charged, nothing remembered), anything else (``4242``...) succeeds.
    An idempotency key seen before returns its first answer without charging again. ``charges``
    lists the real charges; ``calls`` counts every call, replays included.
    Deleting a stored pay method is decided by the token too (``delete_pay_method``).
    """

    __test__ = False  # not a pytest test class, whatever its name says
    name = "testgateway"

    def __init__(self) -> None:
        self.charges: list[Charge] = []
        self.declines: list[str] = []
        self.calls = 0
        self._answers: dict[str, CaptureResult] = {}
        self.deletions: list[str] = []
        self.deletion_calls = 0
        self._deleted_tokens: set[str] = set()
        # Held for the whole capture: two calls with one key at the same moment charge once.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TestGateway(charges={len(self.charges)}, declines={len(self.declines)})"

    @staticmethod
    def _card_tail(request: CaptureRequest) -> str:
        tail = request.token[-4:]
        return tail if len(tail) == 4 and tail.isdigit() else request.last_four

    def capture(self, request: CaptureRequest) -> CaptureResult:
        with self._lock:
            self.calls += 1
            answer = self._answers.get(request.idempotency_key)
            if answer is not None:
                return answer
            tail = self._card_tail(request)
            if tail == "0119":
                raise GatewayUnavailable("testgateway: temporarily unavailable (nothing charged)")
            if tail == "0002":
                self.declines.append(request.idempotency_key)
                answer = CaptureResult("declined", f"test_decline_{len(self.declines)}", "card declined")
            else:
                # Unique across processes, like a real gateway's: derived from the idempotency key.
                txn = f"test_charge_{request.idempotency_key}"
                self.charges.append(Charge(request.idempotency_key, txn, request.amount, request.currency,
                                           request.last_four))
                answer = CaptureResult("succeeded", txn, "approved")
            self._answers[request.idempotency_key] = answer
            return answer

    def charges_for(self, idempotency_key: str) -> list[Charge]:
        return [c for c in self.charges if c.idempotency_key == idempotency_key]

    def delete_pay_method(self, request: PayMethodDeletionRequest) -> PayMethodDeletionResult:
        """Deterministic by token, so that a test (or a worker process) picks the answer with the
        token it stores: a token containing ``refuse`` is refused ("in use by an active
        subscription"); ``unavailable`` raises ``GatewayUnavailable`` (nothing done); ``timeout``
        deletes it, then raises ``TimeoutError`` (the answer was lost: a retry finds it gone);
        any other token is deleted. A token deleted before answers ``deleted`` again, as the
        contract says. ``deletions`` lists each real deletion's idempotency key (never a token);
        ``deletion_calls`` counts every call."""
        with self._lock:
            self.deletion_calls += 1
            token = request.token
            if "refuse" in token:
                return PayMethodDeletionResult("refused", "testgateway: the payment method is in use by an active "
                                                          "subscription")
            if "unavailable" in token:
                raise GatewayUnavailable("testgateway: temporarily unavailable (nothing deleted)")
            if token in self._deleted_tokens:
                return PayMethodDeletionResult("deleted", "testgateway: already deleted")
            self._deleted_tokens.add(token)
            self.deletions.append(request.idempotency_key)
            if "timeout" in token:
                raise TimeoutError("testgateway: no answer (the deletion was made)")
            return PayMethodDeletionResult("deleted", "testgateway: deleted")


#: The process-wide test gateway, so a replayed key is recognised across runs of one process.
TEST_GATEWAY = TestGateway()
#: The value of PAYMENT_GATEWAYS that switches the test gateway on.
TEST_GATEWAYS_SWITCH = "test"

_FACTORIES: dict[str, Callable[[], PaymentGateway]] = {}
#: Registered names that are test doubles: usable only while PAYMENT_GATEWAYS switches them on.
_TEST_DOUBLES: frozenset[str] = frozenset({TestGateway.name})


class GatewayNotConfigured(ValidationError):
    """The name is a test double and this process was not configured to use it: a setup
    problem, not bad data (the capture job charges nothing and parks nobody for it)."""


def is_test_gateway_enabled() -> bool:
    """Whether PAYMENT_GATEWAYS switches the test gateway on in this process (read each call)."""
    return TEST_GATEWAYS_SWITCH in payment_gateways()


def register_gateway(name: str, factory: Callable[[], PaymentGateway]) -> None:
    """Make ``gateway_for(name)`` return ``factory()``; registering a name again replaces it."""
    if not name or len(name) > 50:
        raise ValidationError("name", name, "must be 1 to 50 characters (a pay method's gateway_name)")
    _FACTORIES[name] = factory


def gateway_for(name: str) -> PaymentGateway:
    """The gateway registered as ``name``.

    ``ValidationError`` for a name nobody registered; ``GatewayNotConfigured`` (a
    ``ValidationError``) for the test gateway while PAYMENT_GATEWAYS does not switch it on.
    """
    if name in _TEST_DOUBLES and not is_test_gateway_enabled():
        raise GatewayNotConfigured(
            "gateway", name, "is the test gateway, which approves captures without charging anything: it is "
            f"refused unless the worker's environment sets PAYMENT_GATEWAYS={TEST_GATEWAYS_SWITCH} (tests and demos "
            "only, never production)")
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(registered_gateways()) or "none"
        raise ValidationError("gateway", name, f"is not a registered payment gateway (registered: {known})")
    return factory()


def registered_gateways() -> tuple[str, ...]:
    """The names ``gateway_for`` accepts now (the test gateway only while switched on)."""
    enabled = is_test_gateway_enabled()
    return tuple(sorted(n for n in _FACTORIES if enabled or n not in _TEST_DOUBLES))


register_gateway(TestGateway.name, lambda: TEST_GATEWAY)
