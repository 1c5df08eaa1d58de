"""The payment gateway seam: the deterministic test gateway, the registry, card-number hygiene.

tests/conftest.py switches the test gateway on (``PAYMENT_GATEWAYS=test``); the tests of the
registry without it take it away with ``monkeypatch``.
"""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from billingworker.adapters import gateway as gateway_module
from billingworker.adapters.gateway import (
    TEST_GATEWAY,
    GatewayNotConfigured,
    TestGateway,
    gateway_for,
    register_gateway,
    registered_gateways,
)
from billingworker.domain.errors import ValidationError
from billingworker.domain.ports import CaptureRequest, CaptureResult, GatewayUnavailable, PaymentGateway
from billingworker.domain.redaction import redact_card_numbers


def request(key: str = "capture-1", token: str = "tok_4242424242424242", last_four: str = "4242",
            amount: str = "10.00") -> CaptureRequest:
    return CaptureRequest(idempotency_key=key, amount=Decimal(amount), currency="USD", token=token,
                          last_four=last_four, description="Invoice #1")


def test_a_good_card_is_charged_and_listed():
    gw = TestGateway()
    answer = gw.capture(request())
    assert answer.status == "succeeded"
    assert answer.transaction_id == f"test_charge_{request().idempotency_key}", "unique across processes"
    [charge] = gw.charges
    assert (charge.idempotency_key, charge.amount, charge.currency, charge.last_four) == (
        "capture-1", Decimal("10.00"), "USD", "4242")


def test_the_card_decides_the_answer():
    gw = TestGateway()
    declined = gw.capture(request("k1", token="tok_4000000000000002", last_four="0002"))
    assert (declined.status, declined.message) == ("declined", "card declined")
    with pytest.raises(GatewayUnavailable):
        gw.capture(request("k2", token="tok_4000000000000119", last_four="0119"))
    assert gw.capture(request("k3", token="tok_5555555555554444", last_four="4444")).status == "succeeded"
    # A token that does not end in digits: the last four decide.
    assert gw.capture(request("k4", token="pm_abcdef", last_four="0002")).status == "declined"
    assert [c.idempotency_key for c in gw.charges] == ["k3"]
    assert gw.declines == ["k1", "k4"]


def test_the_same_key_returns_the_first_answer_without_charging_again():
    gw = TestGateway()
    first = gw.capture(request("capture-7"))
    again = gw.capture(request("capture-7", amount="99.00"))
    assert again == first
    assert len(gw.charges) == 1 and gw.calls == 2
    declined = gw.capture(request("capture-8", token="tok_0002", last_four="0002"))
    assert gw.capture(request("capture-8", token="tok_0002", last_four="0002")) == declined
    assert gw.declines == ["capture-8"]


def test_an_unavailable_gateway_remembers_nothing():
    gw = TestGateway()
    for _ in range(2):
        with pytest.raises(GatewayUnavailable):
            gw.capture(request("capture-3", token="tok_0119", last_four="0119"))
    assert gw.charges == [] and gw.calls == 2


def test_one_key_sent_from_many_threads_at_once_charges_once():
    gw = TestGateway()
    barrier = threading.Barrier(8)
    answers: list[CaptureResult] = []

    def send() -> None:
        barrier.wait()
        answers.append(gw.capture(request("capture-race")))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert len(answers) == 8 and len(set(answers)) == 1
    assert len(gw.charges) == 1


def test_the_registry_knows_the_test_gateway_and_refuses_unknown_names():
    assert gateway_for("testgateway") is TEST_GATEWAY
    assert "testgateway" in registered_gateways()
    with pytest.raises(ValidationError) as err:
        gateway_for("nosuchpay")
    assert err.value.field == "gateway" and "testgateway" in err.value.rule


def test_without_payment_gateways_the_test_gateway_is_refused(monkeypatch):
    # Given a worker whose environment does not switch the test gateway on (production)
    monkeypatch.delenv("PAYMENT_GATEWAYS", raising=False)
    # When a pay method names it
    with pytest.raises(GatewayNotConfigured) as err:
        gateway_for("testgateway")
    # Then it is refused, as a ValidationError on "gateway", saying why and how to switch it on
    assert isinstance(err.value, ValidationError)
    assert err.value.field == "gateway" and err.value.value == "testgateway"
    assert "approves captures without charging" in err.value.rule and "PAYMENT_GATEWAYS=test" in err.value.rule
    # And the registry neither lists it nor offers it to a misspelt name
    assert "testgateway" not in registered_gateways()
    with pytest.raises(ValidationError) as unknown:
        gateway_for("nosuchpay")
    assert "testgateway" not in unknown.value.rule and "registered: none" in unknown.value.rule
    assert TEST_GATEWAY.calls == 0


@pytest.mark.parametrize("value", ["", "  ", "none-of-these"])
def test_only_the_exact_switch_turns_the_test_gateway_on(monkeypatch, value):
    monkeypatch.setenv("PAYMENT_GATEWAYS", value)
    if value.strip():
        with pytest.raises(ValueError, match="PAYMENT_GATEWAYS"):
            gateway_for("testgateway")
    else:
        with pytest.raises(GatewayNotConfigured):
            gateway_for("testgateway")


def test_with_payment_gateways_test_the_test_gateway_is_there(monkeypatch):
    monkeypatch.setenv("PAYMENT_GATEWAYS", "test")
    assert gateway_for("testgateway") is TEST_GATEWAY
    assert registered_gateways() == ("testgateway",)


def test_a_real_gateway_needs_no_switch(monkeypatch):
    monkeypatch.delenv("PAYMENT_GATEWAYS", raising=False)
    monkeypatch.setattr(gateway_module, "_FACTORIES", dict(gateway_module._FACTORIES))  # leave no trace
    gw = TestGateway()
    register_gateway("realpay", lambda: gw)
    assert gateway_for("realpay") is gw and registered_gateways() == ("realpay",)


def test_adding_a_gateway_is_one_class_and_one_registration(monkeypatch):
    monkeypatch.setattr(gateway_module, "_FACTORIES", dict(gateway_module._FACTORIES))  # leave no trace

    class AlwaysDeclines:
        name = "declinepay"

        def capture(self, request: CaptureRequest) -> CaptureResult:
            return CaptureResult("declined", "", "insufficient funds")

    gw: PaymentGateway = AlwaysDeclines()
    register_gateway("declinepay", lambda: gw)
    assert gateway_for("declinepay").capture(request()).message == "insufficient funds"
    with pytest.raises(ValidationError):
        register_gateway("", lambda: gw)


def test_a_result_status_is_one_of_three():
    with pytest.raises(ValidationError):
        CaptureResult("maybe", "", "")  # type: ignore[arg-type]


def test_a_request_never_shows_its_token():
    assert "tok_4242424242424242" not in repr(request())
    assert "4242" in repr(request())  # the last four are fine


@pytest.mark.parametrize(("text", "expected"), [
    ("card 4242424242424242 declined", "card ****4242 declined"),
    ("card 4242 4242 4242 4242 declined", "card ****4242 declined"),
    ("card 4242-4242-4242-4242", "card ****4242"),
    ("amex 378282246310005!", "amex ****0005!"),
    ("invoice 12345, ending 4242, txn ch_1234567890", "invoice 12345, ending 4242, txn ch_1234567890"),
])
def test_card_numbers_in_gateway_messages_are_masked(text, expected):
    assert redact_card_numbers(text) == expected
