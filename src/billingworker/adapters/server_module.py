"""Server modules: one seam, ``ServerModule.run(command)``, and a registry by name.

A server module provisions what a service sells on a server (cPanel, Plesk, a registrar for
domains): create, suspend, unsuspend, terminate, change package, change password. The worker
decides a command in a billing transaction (``module_commands`` row), and ``run_module_command``
runs it after the commit. When a module answers "succeeded", the worker sets the service's or
addon's status to match (``domain.accounts.module_commands.STATUS_AFTER_COMMAND``): a module only acts on
the server, never on the billing database.

- ``NoServerModule``: the module of things without one (``products.module`` is ``''``): there
  is no server to act on, so it answers "succeeded" and the worker records the command and sets
  the status. It keeps nothing in memory.
- ``RecordingModule``: the in-memory twin, thread-safe; it records each command it ran in
  ``commands`` and can be told to refuse or to be unreachable (tests). It touches no server, so
  its process-wide instance ``RECORDING_MODULE`` exists for ``module_for`` only when the
  environment switches it on explicitly: ``SERVER_MODULES=test`` (``config.server_modules``;
  the test suite, the demo and the benchmarks set it, production never does). Switched on, it
  is registered as ``recording`` and also stands in for ``''``, so tests see every command;
  otherwise ``module_for("recording")`` is refused like an unknown module.
- ``module_for(name)`` returns the module a product names (``products.module``; a domain's
  ``registrar``).

The contract every module keeps:

- ``run`` carries out ``command.command`` on the account of ``command.item_type``/``item_id``
  and answers ``ModuleResult``. A refusal (no such account, package unknown…) is an answer,
  ``ModuleResult("failed", message)``: the command is recorded as failed and not retried.
- ``ModuleUnavailable`` means the server could not be reached and **nothing was done**: the
  job is retried with backoff. Any other exception is retried too.
- A command may be delivered again after a crash between the module's answer and the commit
  (at-least-once): ``command.idempotency_key`` is the same every time for one command, and
  commands should be safe to repeat (suspending a suspended account is a no-op).
- A secret in ``params`` (a new password, a token) reaches the module as sent, but is stored in
  ``module_commands`` only sealed, and only until the command ran (``domain/accounts/sealing.py``): never
  log ``params`` whole.

Adding a real module is one class and one line::

    class CpanelModule:
        name = "cpanel"

        def __init__(self, host: str, token: str) -> None: ...

        def run(self, command: ModuleCommandRequest) -> ModuleResult:
            # WHM API: suspendacct / unsuspendacct / removeacct / createacct / changepackage ...
            ...

    register_module("cpanel", lambda: CpanelModule(os.environ["WHM_HOST"], os.environ["WHM_TOKEN"]))

A factory only builds the object (no network calls until ``run``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from billingworker.config import server_modules
from billingworker.domain.errors import ValidationError
from billingworker.domain.ports import (
    ModuleCommandRequest,
    ModuleResult,
    ModuleUnavailable,
    ServerModule,
)


@dataclass(frozen=True)
class _Scripted:
    message: str
    transient: bool
    #: How many more calls this answer applies to (None: every call).
    remaining: int | None


class RecordingModule:
    """Records the commands it runs; thread-safe; can be scripted to refuse or be unreachable.

    ``commands`` lists the commands that succeeded, in order; ``calls`` counts every call.
    ``fail(item_type, item_id, ...)`` makes the commands of one thing answer ``failed`` (or raise
    ``ModuleUnavailable`` with ``transient=True``), for ``times`` calls or for ever.
    """

    name = "recording"

    def __init__(self) -> None:
        self.commands: list[ModuleCommandRequest] = []
        self.refused: list[ModuleCommandRequest] = []
        self.calls = 0
        self._script: dict[tuple[str, int], _Scripted] = {}
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RecordingModule(commands={len(self.commands)}, refused={len(self.refused)})"

    def fail(self, item_type: str, item_id: int, message: str = "refused by the test module", *,
             transient: bool = False, times: int | None = None) -> None:
        with self._lock:
            self._script[(item_type, item_id)] = _Scripted(message, transient, times)

    def run(self, command: ModuleCommandRequest) -> ModuleResult:
        with self._lock:
            self.calls += 1
            scripted = self._script.get((command.item_type, command.item_id))
            if scripted is not None and scripted.remaining != 0:
                if scripted.remaining is not None:
                    self._script[(command.item_type, command.item_id)] = _Scripted(
                        scripted.message, scripted.transient, scripted.remaining - 1)
                if scripted.transient:
                    raise ModuleUnavailable(scripted.message)
                self.refused.append(command)
                return ModuleResult("failed", scripted.message)
            self.commands.append(command)
            return ModuleResult("succeeded", f"{command.command} recorded")

    def ran(self, item_type: str, item_id: int) -> list[str]:
        """The commands that succeeded for one thing, in order."""
        return [c.command for c in self.commands if (c.item_type, c.item_id) == (item_type, item_id)]


class NoServerModule:
    """The module of things without one: nothing to run on a server, so every command succeeds
    at once (the worker records it and sets the thing's status). Stateless."""

    name = ""

    def run(self, command: ModuleCommandRequest) -> ModuleResult:
        return ModuleResult("succeeded", f"{command.command} recorded (no server module)")


#: The process-wide recording module: the tests' twin (only while SERVER_MODULES=test).
RECORDING_MODULE = RecordingModule()
NO_SERVER_MODULE = NoServerModule()
#: The value of SERVER_MODULES that switches the recording module on.
TEST_MODULES_SWITCH = "test"

_FACTORIES: dict[str, Callable[[], ServerModule]] = {}
#: Registered names that are test doubles: usable only while SERVER_MODULES switches them on.
_TEST_DOUBLES: frozenset[str] = frozenset({RecordingModule.name})


class ModuleNotConfigured(ValidationError):
    """The name is a test double and this process was not configured to use it."""


def is_test_module_enabled() -> bool:
    """Whether SERVER_MODULES switches the recording module on in this process (read each call)."""
    return TEST_MODULES_SWITCH in server_modules()


def register_module(name: str, factory: Callable[[], ServerModule]) -> None:
    """Make ``module_for(name)`` return ``factory()``; registering a name again replaces it."""
    if len(name) > 50:
        raise ValidationError("name", name, "must be at most 50 characters (a product's module)")
    _FACTORIES[name] = factory


def unregister_module(name: str) -> None:
    """Forget a module (tests); the module of ``''`` stays."""
    if name:
        _FACTORIES.pop(name, None)


def module_for(name: str) -> ServerModule:
    """The module registered as ``name`` ('' = no module: ``NO_SERVER_MODULE``, or the recording
    module while SERVER_MODULES=test).

    ``ValidationError`` for a name nobody registered: the command cannot run until an operator
    installs that module. ``ModuleNotConfigured`` (a ``ValidationError``) for ``recording``
    while SERVER_MODULES does not switch it on.
    """
    name = name or ""
    if name in _TEST_DOUBLES and not is_test_module_enabled():
        raise ModuleNotConfigured(
            "module", name, "is the recording test module, which runs nothing on any server: it is refused unless "
            f"the worker's environment sets SERVER_MODULES={TEST_MODULES_SWITCH} (tests and demos only, never "
            "production)")
    factory = _FACTORIES.get(name)
    if factory is None:
        known = ", ".join(repr(n) for n in registered_modules()) or "none"
        raise ValidationError("module", name, f"is not a registered server module (registered: {known})")
    return factory()


def registered_modules() -> tuple[str, ...]:
    """The names ``module_for`` accepts now (``recording`` only while switched on)."""
    enabled = is_test_module_enabled()
    return tuple(sorted(n for n in _FACTORIES if enabled or n not in _TEST_DOUBLES))


def _module_of_things_without_one() -> ServerModule:
    # Under SERVER_MODULES=test the recording module stands in, so that tests see every command.
    return RECORDING_MODULE if is_test_module_enabled() else NO_SERVER_MODULE


register_module("", _module_of_things_without_one)
register_module(RecordingModule.name, lambda: RECORDING_MODULE)
