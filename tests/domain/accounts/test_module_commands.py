"""Module commands: queued in a transaction, run once under the row lock, errors counted."""

from __future__ import annotations

from datetime import date, timedelta
from functools import partial

import pytest
from sqlalchemy import func, select

from billingworker.adapters.server_module import RECORDING_MODULE, module_for
from billingworker.domain.accounts.module_commands import (
    pending_module_command_ids,
    queued_commands,
    record_module_command,
    record_module_error,
    run_queued_command,
)
from billingworker.domain.errors import NotFound, ValidationError
from billingworker.domain.models import Addon, Client, Domain, ModuleCommand, Product, Service
from billingworker.domain.ports import ModuleCommandRequest, ModuleResult, ModuleUnavailable
from tests import factories as f
from tests.factories import COMMAND_NOW as NOW
from tests.factories import queue_command as queue
from tests.factories import race
from tests.factories import run_command as run


@pytest.fixture(autouse=True)
def _fresh_recording_module():
    RECORDING_MODULE.__init__()
    yield
    RECORDING_MODULE.__init__()


def count(session, *where):
    return session.scalar(select(func.count()).select_from(ModuleCommand).where(*where))


@pytest.fixture
def svc(session):
    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2026, 2, 1), domain="shop.example", username="shop")
    session.commit()
    return s


def test_queue_is_idempotent_per_request_key(session, svc):
    first = queue(session, "service", svc.id, svc.client_id)
    again = queue(session, "service", svc.id, svc.client_id)
    session.commit()
    assert first == again and count(session) == 1
    row = session.get(ModuleCommand, first.command_id)
    assert (row.status, row.attempts, row.command, row.request_key) == ("queued", 0, "suspend", "k:1")
    assert first.message() == {"item_type": "service", "item_id": svc.id, "command": "suspend",
                               "command_id": first.command_id}


def test_a_command_runs_once_and_a_second_delivery_is_skipped(session, svc):
    q = queue(session, "service", svc.id, svc.client_id, params={"reason": "overdue"})
    session.commit()
    done = run(session, q.command_id, expect=("service", svc.id, "suspend"))
    session.commit()
    assert done.outcome == "succeeded" and done.client_id == svc.client_id
    [sent] = RECORDING_MODULE.commands
    assert (sent.command, sent.item_type, sent.item_id, sent.domain, sent.username, dict(sent.params)) == (
        "suspend", "service", svc.id, "shop.example", "shop", {"reason": "overdue"})
    assert sent.idempotency_key == f"module-command-{q.command_id}"
    row = session.get(ModuleCommand, q.command_id)
    assert (row.status, row.attempts, row.result, row.finished_at is not None) == (
        "succeeded", 1, "suspend recorded", True)
    assert run(session, q.command_id).outcome == "skipped"
    assert RECORDING_MODULE.calls == 1


def test_a_refusal_is_recorded_failed_and_runs_again_when_asked(session, svc):
    q = queue(session, "service", svc.id, svc.client_id)
    session.commit()
    RECORDING_MODULE.fail("service", svc.id, "account not found", times=1)
    done = run(session, q.command_id)
    session.commit()
    assert (done.outcome, done.message) == ("failed", "account not found")
    assert session.get(ModuleCommand, q.command_id).status == "failed"
    # A requeued dead letter (an operator's "try again") runs a failed row again.
    assert run(session, q.command_id).outcome == "succeeded"


def test_a_modules_words_are_kept_with_their_control_characters_escaped(session, svc):
    # A NUL in a module's answer failed the write on PostgreSQL (no NUL in text) after the
    # command had run on the server: the words are the outside's, kept escaped
    q = queue(session, "service", svc.id, svc.client_id)
    session.commit()
    RECORDING_MODULE.fail("service", svc.id, "bad\x00 state \x1b[31m", times=1)
    done = run(session, q.command_id)
    session.commit()
    assert done.outcome == "failed"
    session.expire_all()
    assert session.get(ModuleCommand, q.command_id).result == "bad\\x00 state \\x1b[31m"


def test_a_module_exception_propagates_and_is_counted_separately(session, svc):
    q = queue(session, "service", svc.id, svc.client_id)
    session.commit()
    RECORDING_MODULE.fail("service", svc.id, "connection refused", transient=True)
    with pytest.raises(ModuleUnavailable):
        run(session, q.command_id)
    session.rollback()
    record_module_error(session, q.command_id, "ModuleUnavailable: connection refused", give_up=False, now=NOW)
    session.commit()
    row = session.get(ModuleCommand, q.command_id)
    assert (row.status, row.attempts, row.result) == ("queued", 1, "ModuleUnavailable: connection refused")
    record_module_error(session, q.command_id, "ModuleUnavailable: connection refused", give_up=True, now=NOW)
    session.commit()
    session.expire_all()
    row = session.get(ModuleCommand, q.command_id)
    assert (row.status, row.attempts, row.finished_at is not None) == ("failed", 2, True)


def test_an_error_recorded_after_a_twin_succeeded_changes_nothing(session, svc):
    q = queue(session, "service", svc.id, svc.client_id)
    session.commit()
    run(session, q.command_id)
    session.commit()
    record_module_error(session, q.command_id, "late", give_up=True, now=NOW)
    session.commit()
    assert session.get(ModuleCommand, q.command_id).status == "succeeded"


def test_a_thing_that_no_longer_exists_fails_the_command(session, svc):
    q = queue(session, "service", svc.id + 100, svc.client_id)
    session.commit()
    done = run(session, q.command_id)
    assert done.outcome == "failed" and "no longer exists" in done.message
    assert RECORDING_MODULE.calls == 0


def test_an_unregistered_module_fails_the_command_without_calling_anything(session, svc):
    product = Product(name="cPanel Hosting", module="cpanel")
    session.add(product)
    session.flush()
    svc.product_id = product.id
    q = queue(session, "service", svc.id, svc.client_id)
    session.commit()
    done = run(session, q.command_id)
    assert done.outcome == "failed" and "'cpanel' is not a registered server module" in done.message


def test_addons_use_their_service_module_and_domains_their_registrar(session, svc):
    product = Product(name="VPS", module="vpsmod")
    session.add(product)
    session.flush()
    svc.product_id = product.id
    addon = f.addon(session, svc, next_due_date=date(2026, 2, 1))
    dom = f.domain(session, _client(session, svc), next_due_date=date(2026, 2, 1), registrar="enom",
                   domain="shop.example")
    a = queue(session, "addon", addon.id, svc.client_id, key="a")
    d = queue(session, "domain", dom.id, svc.client_id, key="d", command="terminate")
    session.commit()
    asked: list[str] = []

    def modules(name: str):
        asked.append(name)
        return RECORDING_MODULE

    run(session, a.command_id, modules)
    run(session, d.command_id, modules)
    assert asked == ["vpsmod", "enom"]
    sent = {c.item_type: c for c in RECORDING_MODULE.commands}
    assert (sent["addon"].module, sent["addon"].domain, sent["addon"].username) == ("vpsmod", "shop.example", "shop")
    assert (sent["domain"].module, sent["domain"].domain, sent["domain"].command) == ("enom", "shop.example",
                                                                                      "terminate")


def _client(session, svc):
    from billingworker.domain.models import Client

    return session.get(Client, svc.client_id)


def test_a_message_that_does_not_match_its_row_is_bad_input(session, svc):
    q = queue(session, "service", svc.id, svc.client_id)
    session.commit()
    with pytest.raises(ValidationError) as err:
        run(session, q.command_id, expect=("service", svc.id, "terminate"))
    assert err.value.field == "command_id"
    with pytest.raises(NotFound):
        run(session, 999)
    assert RECORDING_MODULE.calls == 0


def test_record_module_command_checks_the_thing_and_runs_once_per_key(session, svc):
    first = record_module_command(session, "service", svc.id, "unsuspend", None, request_key="rmc:1", now=NOW)
    again = record_module_command(session, "service", svc.id, "unsuspend", None, request_key="rmc:1", now=NOW)
    assert first == again and count(session) == 1
    assert session.get(ModuleCommand, first.command_id).client_id == svc.client_id
    with pytest.raises(NotFound):
        record_module_command(session, "service", 999, "suspend", None, request_key="rmc:2", now=NOW)
    with pytest.raises(ValidationError) as err:
        record_module_command(session, "billable", 1, "suspend", None, request_key="rmc:3", now=NOW)
    assert err.value.field == "item_type"
    # a password is accepted, and kept only sealed (tests/domain/accounts/test_sealing.py)
    sealed = record_module_command(session, "service", svc.id, "change_password", {"Password": "x-secret"},
                                   request_key="rmc:4", now=NOW)
    row = session.get(ModuleCommand, sealed.command_id)
    assert row.params == '{"Password": "[sealed]"}' and "x-secret" not in (row.sealed_params or "")


def test_pending_ids_are_the_old_queued_rows_oldest_first(session, svc):
    old = queue(session, "service", svc.id, svc.client_id, key="old", now=NOW - timedelta(minutes=10))
    older = queue(session, "service", svc.id, svc.client_id, key="older", now=NOW - timedelta(minutes=20))
    queue(session, "service", svc.id, svc.client_id, key="new", now=NOW)
    done = queue(session, "service", svc.id, svc.client_id, key="done", now=NOW - timedelta(minutes=30))
    session.commit()
    run(session, done.command_id)
    session.commit()
    ids = pending_module_command_ids(session, created_before=NOW - timedelta(minutes=5), limit=10)
    assert ids == [older.command_id, old.command_id]
    assert pending_module_command_ids(session, created_before=NOW - timedelta(minutes=5), limit=1) == [
        older.command_id]
    assert [q.command_id for q in queued_commands(session, ids)] == sorted(ids)


def test_two_workers_running_one_command_at_once_call_the_module_once(pg_engine, pg_session):
    s = pg_session
    c = f.client(s)
    svc = f.service(s, c, next_due_date=date(2026, 2, 1))
    q = queue(s, "service", svc.id, c.id)
    s.commit()
    slow = _SlowModule()
    go = partial(lambda session: run_queued_command(session, q.command_id, module_for=lambda _: slow, now=NOW)
                 .outcome)
    outcomes = race(pg_engine, go, go, go)
    assert sorted(outcomes) == ["skipped", "skipped", "succeeded"]
    assert slow.calls == 1
    s.expire_all()
    assert (s.get(ModuleCommand, q.command_id).status, s.get(ModuleCommand, q.command_id).attempts) == (
        "succeeded", 1)


class _SlowModule:
    """Answers after a pause, so that the twins surely arrive while the first holds the lock."""

    name = "slow"

    def __init__(self) -> None:
        self.calls = 0

    def run(self, command: ModuleCommandRequest) -> ModuleResult:
        import time

        self.calls += 1
        time.sleep(0.3)
        return ModuleResult("succeeded", "ok")


@pytest.mark.parametrize(("command", "status"), [("suspend", "Suspended"), ("unsuspend", "Active"),
                                                 ("create", "Active"), ("terminate", "Terminated"),
                                                 ("change_password", "Pending"), ("change_package", "Pending")])
def test_a_succeeded_command_sets_the_services_status_as_whmcs_buttons_do(session, svc, command, status):
    svc.status = "Pending"  # so that every change shows, "create" included
    q = queue(session, "service", svc.id, svc.client_id, command=command)
    session.commit()
    run_queued_command(session, q.command_id, module_for=module_for, now=NOW, as_of=date(2026, 1, 10))
    session.commit()
    session.expire_all()
    service = session.get(Service, svc.id)
    assert service.status == status
    assert service.termination_date == (date(2026, 1, 10) if command == "terminate" else None)


def test_a_refused_command_leaves_the_status_and_domains_keep_theirs(session, svc):
    addon = f.addon(session, svc, next_due_date=date(2026, 2, 1))
    dom = f.domain(session, session.get(Client, svc.client_id), next_due_date=date(2026, 2, 1))
    session.commit()
    RECORDING_MODULE.fail("service", svc.id, "account not found")
    for item_type, item_id in (("service", svc.id), ("addon", addon.id), ("domain", dom.id)):
        q = queue(session, item_type, item_id, svc.client_id, key=f"k:{item_type}")
        run(session, q.command_id)
    session.commit()
    session.expire_all()
    assert session.get(Service, svc.id).status == "Active", "the module refused: nothing changed on the server"
    assert session.get(Addon, addon.id).status == "Suspended"
    assert session.get(Domain, dom.id).status == "Active"
