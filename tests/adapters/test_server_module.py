"""The server-module seam: the recording twin, scripted failures, the registry.

tests/conftest.py switches the recording module on (``SERVER_MODULES=test``); the tests of the
registry without it take it away with ``monkeypatch``.
"""

from __future__ import annotations

import threading

import pytest

from billingworker.adapters import server_module as sm
from billingworker.adapters.server_module import (
    NO_SERVER_MODULE,
    RECORDING_MODULE,
    ModuleNotConfigured,
    RecordingModule,
    module_for,
    register_module,
    registered_modules,
    unregister_module,
)
from billingworker.domain.errors import ValidationError
from billingworker.domain.ports import (
    MODULE_COMMANDS,
    ModuleCommandRequest,
    ModuleResult,
    ModuleUnavailable,
    ServerModule,
)


@pytest.fixture(autouse=True)
def _fresh_recording_module():
    RECORDING_MODULE.__init__()
    yield
    RECORDING_MODULE.__init__()


def request(command: str = "suspend", item_id: int = 12, item_type: str = "service") -> ModuleCommandRequest:
    return ModuleCommandRequest(command_id=1, idempotency_key="module-command-1", item_type=item_type,
                                item_id=item_id, client_id=3, command=command, module="", domain="example.com",
                                username="exampl", params={"reason": "overdue"})


def test_the_commands_are_the_spec_list():
    assert MODULE_COMMANDS == ("create", "suspend", "unsuspend", "terminate", "change_package", "change_password")


def test_recording_module_records_what_it_ran():
    module = RecordingModule()
    answer = module.run(request("suspend"))
    assert answer == ModuleResult("succeeded", "suspend recorded") and answer.succeeded
    module.run(request("unsuspend"))
    assert module.ran("service", 12) == ["suspend", "unsuspend"]
    assert module.calls == 2 and module.refused == []


def test_a_scripted_refusal_is_an_answer_not_an_exception():
    module = RecordingModule()
    module.fail("service", 12, "no such account")
    answer = module.run(request())
    assert answer.status == "failed" and answer.message == "no such account" and not answer.succeeded
    assert module.commands == [] and len(module.refused) == 1
    assert module.run(request(item_id=13)).succeeded, "other things are not affected"


def test_a_transient_failure_raises_for_a_number_of_calls():
    module = RecordingModule()
    module.fail("service", 12, "server down", transient=True, times=2)
    for _ in range(2):
        with pytest.raises(ModuleUnavailable):
            module.run(request())
    assert module.run(request()).succeeded
    assert module.calls == 3 and module.ran("service", 12) == ["suspend"]


def test_module_result_status_is_checked():
    with pytest.raises(ValidationError):
        ModuleResult("maybe")  # type: ignore[arg-type]


def test_recording_module_is_thread_safe():
    module = RecordingModule()
    threads = [threading.Thread(target=lambda: [module.run(request()) for _ in range(100)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert module.calls == 800 and len(module.commands) == 800


def test_with_server_modules_test_no_module_is_the_recording_module(monkeypatch):
    monkeypatch.setenv("SERVER_MODULES", "test")
    assert module_for("") is RECORDING_MODULE
    assert module_for("recording") is RECORDING_MODULE
    assert registered_modules() == ("", "recording")


def test_without_server_modules_the_recording_module_is_refused(monkeypatch):
    # Given a worker whose environment does not switch the test module on (production)
    monkeypatch.delenv("SERVER_MODULES", raising=False)
    # When a product names the recording module
    with pytest.raises(ModuleNotConfigured) as err:
        module_for("recording")
    # Then it is refused, as a ValidationError on "module", saying why and how to switch it on
    assert isinstance(err.value, ValidationError) and err.value.field == "module"
    assert "runs nothing on any server" in err.value.rule and "SERVER_MODULES=test" in err.value.rule
    assert registered_modules() == ("",)
    # And a thing without a module gets the stateless module, which remembers nothing
    module = module_for("")
    assert module is NO_SERVER_MODULE
    assert module.run(request("suspend")) == ModuleResult("succeeded", "suspend recorded (no server module)")
    assert RECORDING_MODULE.calls == 0 and RECORDING_MODULE.commands == []


def test_an_unknown_switch_is_a_configuration_error(monkeypatch):
    monkeypatch.setenv("SERVER_MODULES", "cpanel")
    with pytest.raises(ValueError, match="SERVER_MODULES"):
        module_for("")


def test_an_unregistered_module_is_a_clear_error():
    with pytest.raises(ValidationError) as err:
        module_for("cpanel")
    assert err.value.field == "module" and "not a registered server module" in err.value.rule


def test_a_real_module_is_one_class_and_one_line():
    class CpanelModule:
        name = "cpanel"

        def __init__(self) -> None:
            self.seen: list[str] = []

        def run(self, command: ModuleCommandRequest) -> ModuleResult:
            self.seen.append(command.command)
            return ModuleResult("succeeded", "done")

    instance = CpanelModule()
    register_module("cpanel", lambda: instance)
    try:
        module: ServerModule = module_for("cpanel")
        assert module.run(request("terminate")).succeeded and instance.seen == ["terminate"]
    finally:
        unregister_module("cpanel")
    assert "cpanel" not in sm.registered_modules()


def test_a_request_is_frozen():
    # The request is a frozen dataclass: a module cannot change what the worker recorded.
    req = request()
    with pytest.raises(AttributeError):
        req.command = "terminate"  # type: ignore[misc]
