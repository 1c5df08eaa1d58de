"""Secrets in server-module parameters: stored only sealed, erased once the command ran, opened
during a key rotation with the old key (issue: a nested password was kept in module_commands.params)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from billingworker.adapters.server_module import RECORDING_MODULE
from billingworker.domain.accounts.module_commands import record_module_error
from billingworker.domain.accounts.sealing import SEALED, ParamSealer, public_params
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import ModuleCommand
from tests.domain.accounts.test_module_commands import svc  # noqa: F401 - fixture
from tests.factories import COMMAND_NOW as NOW
from tests.factories import queue_command as queue
from tests.factories import run_command as run

SECRET = "s3cret-Pa55"
PARAMS = {"account": {"pass": SECRET, "plan": "gold"}, "api_key": "k-123", "note": "hello"}
OLD, NEW = b"old-key-" + b"x" * 32, b"new-key-" + b"y" * 32


@pytest.fixture(autouse=True)
def _fresh_module():
    RECORDING_MODULE.__init__()
    yield
    RECORDING_MODULE.__init__()


def stored(session, command_id) -> str:
    """Everything the row keeps, as another application would read it."""
    session.expire_all()
    row = session.get(ModuleCommand, command_id)
    return json.dumps([row.params, row.sealed_params, row.result])


def test_a_nested_secret_is_stored_only_sealed_and_reaches_the_module(session, svc):  # noqa: F811
    # Given a command whose parameters hold a password two levels down and an API key
    q = queue(session, "service", svc.id, svc.client_id, command="change_password", params=PARAMS)
    session.commit()

    # Then the row shows the parameters with the secrets replaced, and keeps no secret in clear
    row = session.get(ModuleCommand, q.command_id)
    assert json.loads(row.params) == {"account": {"pass": SEALED, "plan": "gold"}, "api_key": SEALED,
                                      "note": "hello"}
    assert SECRET not in stored(session, q.command_id) and "k-123" not in stored(session, q.command_id)

    # When it runs, the module gets the real values; afterwards the sealed copy is erased
    assert run(session, q.command_id).outcome == "succeeded"
    session.commit()
    [sent] = RECORDING_MODULE.commands
    assert dict(sent.params) == PARAMS
    assert SECRET not in repr(sent)
    assert session.get(ModuleCommand, q.command_id).sealed_params is None


def test_a_command_that_gives_up_forgets_its_secrets(session, svc):  # noqa: F811
    q = queue(session, "service", svc.id, svc.client_id, command="change_password", params=PARAMS)
    session.commit()
    record_module_error(session, q.command_id, "ModuleUnavailable: down", give_up=False, now=NOW)
    session.commit()
    assert session.get(ModuleCommand, q.command_id).sealed_params is not None, "kept for the retry"
    record_module_error(session, q.command_id, "ModuleUnavailable: down", give_up=True, now=NOW)
    session.commit()
    session.expire_all()
    assert session.scalar(select(ModuleCommand.sealed_params)) is None


def test_parameters_without_a_secret_are_not_sealed(session, svc):  # noqa: F811
    q = queue(session, "service", svc.id, svc.client_id, params={"reason": "overdue"})
    session.commit()
    row = session.get(ModuleCommand, q.command_id)
    assert (json.loads(row.params), row.sealed_params) == ({"reason": "overdue"}, None)


def test_rotation_opens_what_the_old_key_sealed_only_while_it_is_listed():
    sealed = ParamSealer([OLD]).seal(PARAMS)
    assert SECRET not in sealed
    assert ParamSealer([NEW, OLD]).unseal(sealed) == PARAMS
    with pytest.raises(ValidationError, match="cannot be opened"):
        ParamSealer([NEW]).unseal(sealed)


def test_secret_keys_are_found_at_any_depth_and_in_lists():
    shown, found = public_params({"servers": [{"name": "a", "Token": "t"}], "PassPhrase": "p", "count": 2})
    assert found and shown == {"servers": [{"name": "a", "Token": SEALED}], "PassPhrase": SEALED, "count": 2}
    assert public_params({"plan": "gold"}) == ({"plan": "gold"}, False)
