"""Service jobs through a real worker: mass update, module commands, delete selected items."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

import pytest
from dramatiq import Message
from sqlalchemy import func, select

from billingworker.actors import broker
from billingworker.actors.services import (
    delete_selected_items,
    mass_update,
    relay_module_commands,
    run_module_command,
)
from billingworker.adapters.server_module import RECORDING_MODULE
from billingworker.domain.accounts.module_commands import NewCommand, queue_module_commands
from billingworker.domain.models import (
    Client,
    Domain,
    EmailLog,
    Invoice,
    JobFailure,
    ModuleCommand,
    Service,
)
from tests import factories as f

from .conftest import NOW, dead_letters, drain


@pytest.fixture(autouse=True)
def _fresh_recording_module():
    RECORDING_MODULE.__init__()
    yield
    RECORDING_MODULE.__init__()


def count(session, model, *where):
    return session.scalar(select(func.count()).select_from(model).where(*where))


def redeliver(message: Message) -> None:
    """The broker delivers the very same message again (at-least-once)."""
    broker.enqueue(message)


def items(*things) -> list[dict]:
    return [{"type": t, "id": i} for t, i in things]


@pytest.fixture
def hosting(session):
    c = f.client(session)
    svc = f.service(session, c, next_due_date=date(2026, 2, 1), amount=Decimal("60.00"))
    dom = f.domain(session, c, next_due_date=date(2026, 2, 1), amount=Decimal("365.00"))
    session.commit()
    return c, svc, dom


def test_mass_update_delivered_twice_invoices_emails_and_runs_commands_once(session, worker, mailer, hosting):
    c, svc, dom = hosting
    message = mass_update.send(client_id=c.id, items=items(("service", svc.id), ("domain", dom.id)),
                               changes={"next_due_date": "2026-02-06", "module_command": "suspend",
                                        "payment_method": "paypal"},
                               create_prorata_invoice=True)
    drain()
    redeliver(message)
    drain()
    assert dead_letters() == []
    [inv] = session.scalars(select(Invoice)).all()
    assert (inv.total, inv.date_due, inv.payment_method) == (Decimal("15.00"), NOW.date(), "paypal")
    assert len(mailer.sent) == 1 and count(session, EmailLog) == 1
    assert sorted((cmd.item_type, cmd.item_id, cmd.command) for cmd in RECORDING_MODULE.commands) == [
        ("domain", dom.id, "suspend"), ("service", svc.id, "suspend")]
    assert [r.status for r in session.scalars(select(ModuleCommand))] == ["succeeded", "succeeded"]
    assert {r.request_key for r in session.scalars(select(ModuleCommand))} == {
        f"mass_update:message:{message.message_id}:service:{svc.id}",
        f"mass_update:message:{message.message_id}:domain:{dom.id}"}
    session.expire_all()
    assert session.get(Service, svc.id).next_due_date == date(2026, 2, 6)


def test_mass_update_with_one_bad_item_is_dead_lettered_and_changes_nothing(session, worker, hosting):
    c, svc, _ = hosting
    other = f.client(session)
    foreign = f.service(session, other, next_due_date=date(2026, 2, 1))
    session.commit()
    message = mass_update.send(client_id=c.id, items=items(("service", svc.id), ("service", foreign.id)),
                               changes={"next_due_date": "2026-02-06", "module_command": "terminate",
                                        "status": "Terminated"},
                               create_prorata_invoice=True)
    drain()
    [dead] = dead_letters()
    assert dead.message_id == message.message_id and dead.options.get("retries", 0) == 0
    failure = session.execute(select(JobFailure)).scalar_one()
    assert (failure.field, failure.client_id) == ("items[1].id", c.id)
    assert count(session, Invoice) == 0 and count(session, ModuleCommand) == 0 and RECORDING_MODULE.calls == 0
    session.expire_all()
    assert (session.get(Service, svc.id).status, session.get(Service, svc.id).next_due_date) == (
        "Active", date(2026, 2, 1))


def test_a_prorata_invoice_beyond_what_the_books_hold_is_refused_at_once(session, worker, hosting):
    # Each amount fits NUMERIC(18,4); decades of prorata of the largest recurring amount do not
    c, svc, _ = hosting
    mass_update.send(client_id=c.id, items=items(("service", svc.id)), create_prorata_invoice=True,
                     changes={"next_due_date": "2199-12-31", "recurring_amount": "99999999999999.99"})
    drain()
    [dead] = dead_letters()
    assert dead.options.get("retries", 0) == 0
    failure = session.execute(select(JobFailure)).scalar_one()
    assert failure.field == "changes" and "beyond the largest amount the books hold" in failure.reason
    assert count(session, Invoice) == 0
    session.expire_all()
    assert session.get(Service, svc.id).next_due_date == date(2026, 2, 1)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"changes": {"colour": "red"}}, "changes.colour"),
    ({"changes": "suspend"}, "changes"),
    ({"changes": {"status": "Active"}, "items": [{"type": "billable", "id": 1}]}, "items[0].type"),
    ({"changes": {"status": "Active"}, "create_prorata_invoice": "yes"}, "create_prorata_invoice"),
    ({"changes": {"recurring_amount": 9.99}}, "changes.recurring_amount"),
])
def test_mass_update_bad_arguments_name_the_field(session, worker, hosting, kwargs, field):
    c, svc, _ = hosting
    mass_update.send(**{"client_id": c.id, "items": items(("service", svc.id)), **kwargs})
    drain()
    assert len(dead_letters()) == 1
    assert session.execute(select(JobFailure.field)).scalar_one() == field


def test_mass_update_with_a_request_id_runs_once_per_request(session, worker, mailer, hosting):
    c, svc, _ = hosting
    for _ in range(2):
        mass_update.send(client_id=c.id, items=items(("service", svc.id)), request_id="admin-42",
                         changes={"next_due_date": "2026-02-11", "module_command": "unsuspend"},
                         create_prorata_invoice=True)
        drain()
    assert count(session, Invoice) == 1 and len(mailer.sent) == 1
    assert session.scalar(select(Invoice.total)) == Decimal("20.00")
    assert RECORDING_MODULE.ran("service", svc.id) == ["unsuspend"]


def test_run_module_command_asked_directly_runs_once_per_message(session, worker, hosting):
    c, svc, _ = hosting
    message = run_module_command.send(item_type="service", item_id=svc.id, command="change_package",
                                      params={"package": "gold"})
    drain()
    redeliver(message)
    drain()
    assert dead_letters() == []
    [row] = session.scalars(select(ModuleCommand)).all()
    assert (row.request_key, row.status, row.attempts, row.client_id) == (
        f"run_module_command:message:{message.message_id}", "succeeded", 1, c.id)
    [sent] = RECORDING_MODULE.commands
    assert (sent.command, dict(sent.params)) == ("change_package", {"package": "gold"})


def test_a_module_that_cannot_be_reached_is_retried(session, worker, hosting, monkeypatch):
    _, svc, _ = hosting
    RECORDING_MODULE.fail("service", svc.id, "connection refused", transient=True, times=1)
    # Quick retries: the actor's own policy (a message's options are ignored, message_options.py)
    monkeypatch.setitem(run_module_command.options, "min_backoff", 10)
    monkeypatch.setitem(run_module_command.options, "max_backoff", 20)
    run_module_command.send(item_type="service", item_id=svc.id, command="suspend")
    drain()
    assert dead_letters() == []
    row = session.scalars(select(ModuleCommand)).one()
    assert (row.status, row.attempts) == ("succeeded", 2)
    assert RECORDING_MODULE.ran("service", svc.id) == ["suspend"]


def test_after_the_last_retry_the_command_is_failed(session, worker, hosting, monkeypatch):
    _, svc, _ = hosting
    RECORDING_MODULE.fail("service", svc.id, "connection refused", transient=True)
    monkeypatch.setitem(run_module_command.options, "max_retries", 0)
    run_module_command.send(item_type="service", item_id=svc.id, command="suspend")
    drain()
    assert len(dead_letters()) == 1
    row = session.scalars(select(ModuleCommand)).one()
    assert (row.status, row.attempts) == ("failed", 1) and "connection refused" in row.result


def test_a_module_refusal_is_recorded_not_retried(session, worker, hosting):
    c, svc, _ = hosting
    RECORDING_MODULE.fail("service", svc.id, "no such account")
    run_module_command.send(item_type="service", item_id=svc.id, command="terminate")
    drain()
    assert dead_letters() == [] and RECORDING_MODULE.calls == 1
    row = session.scalars(select(ModuleCommand)).one()
    assert (row.status, row.result) == ("failed", "no such account")
    failure = session.scalars(select(JobFailure)).one()
    assert (failure.actor, failure.error, failure.client_id) == ("run_module_command", "ModuleCommandFailed", c.id)
    assert "no such account" in failure.reason


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"item_type": "billable", "item_id": 1, "command": "suspend"}, "item_type"),
    ({"item_type": "service", "item_id": 1, "command": "reboot"}, "command"),
    ({"item_type": "service", "item_id": 999, "command": "suspend"}, "item_id"),
    ({"item_type": "service", "item_id": 1, "command": "suspend", "command_id": 999}, "command_id"),
])
def test_run_module_command_bad_input(session, worker, hosting, kwargs, field):
    run_module_command.send(**kwargs)
    drain()
    assert len(dead_letters()) == 1 and RECORDING_MODULE.calls == 0
    assert session.execute(select(JobFailure.field)).scalar_one() == field


def test_relay_sends_the_commands_a_crash_left_queued(session, worker, hosting):
    c, svc, dom = hosting
    old = NOW - timedelta(minutes=10)
    queue_module_commands(session, [NewCommand("service", svc.id, c.id, "suspend", {}, "lost:1"),
                                    NewCommand("domain", dom.id, c.id, "suspend", {}, "lost:2")], now=old)
    queue_module_commands(session, [NewCommand("service", svc.id, c.id, "unsuspend", {}, "fresh:1")],
                          now=NOW - timedelta(minutes=1))
    session.commit()
    relay_module_commands.send()
    drain()
    assert sorted(cmd.request_key for cmd in session.scalars(
        select(ModuleCommand).where(ModuleCommand.status == "succeeded"))) == ["lost:1", "lost:2"]
    relay_module_commands.send(older_than_seconds=0)
    relay_module_commands.send(older_than_seconds=0)
    drain()
    assert RECORDING_MODULE.calls == 3, "each command ran once, however often it was relayed"


def test_delete_selected_items_twice_deletes_once_and_runs_no_command(session, worker, hosting):
    c, svc, dom = hosting
    f.addon(session, session.get(Service, svc.id), next_due_date=date(2026, 2, 1))
    session.commit()
    message = delete_selected_items.send(client_id=c.id, items=items(("service", svc.id), ("domain", dom.id)))
    drain()
    redeliver(message)
    drain()
    assert dead_letters() == []
    assert count(session, Service) == 0 and count(session, Domain) == 0
    assert count(session, ModuleCommand) == 0 and RECORDING_MODULE.calls == 0


def test_delete_selected_items_of_another_client_is_refused(session, worker, hosting):
    c, svc, _ = hosting
    other = f.client(session)
    foreign = f.service(session, other, next_due_date=date(2026, 2, 1))
    session.commit()
    delete_selected_items.send(client_id=c.id, items=items(("service", svc.id), ("service", foreign.id)))
    drain()
    assert len(dead_letters()) == 1
    assert count(session, Service) == 2


def test_the_scheduler_relays_module_commands_a_crash_left_queued(session, engine, worker, clock, hosting):
    from billingworker.scheduler import Scheduler

    # Given a command queued ten minutes ago whose run_module_command message was lost
    c, svc, _ = hosting
    queue_module_commands(session, [NewCommand("service", svc.id, c.id, "suspend", {}, "lost:1")],
                          now=NOW - timedelta(minutes=10))
    session.commit()

    # When the scheduler ticks
    lines = Scheduler(engine, clock).tick()
    drain()

    # Then the command ran, once
    assert "relayed outbox" in lines
    assert session.scalar(select(ModuleCommand.status).where(ModuleCommand.request_key == "lost:1")) == "succeeded"
    assert RECORDING_MODULE.calls == 1


def test_a_mass_suspend_leaves_the_services_suspended_once_the_module_did_it(session, worker, hosting):
    # The WHMCS admin's "Suspend" on selected services: the module suspends the accounts and the
    # services show Suspended; a domain (the registrar) keeps its status.
    c, svc, dom = hosting
    other = f.service(session, c, next_due_date=date(2026, 2, 1), domain="two.example")
    session.commit()
    RECORDING_MODULE.fail("service", other.id, "account not found")
    mass_update.send(client_id=c.id, items=items(("service", svc.id), ("service", other.id), ("domain", dom.id)),
                     changes={"module_command": "suspend"})
    drain()
    session.expire_all()
    assert session.get(Service, svc.id).status == "Suspended"
    assert session.get(Service, other.id).status == "Active", "the module refused: the account runs on"
    assert session.get(Domain, dom.id).status == "Active"


def test_a_redelivered_delete_never_deletes_a_new_thing_that_got_the_same_id(session, worker, hosting):
    # Given a service deleted by a message, and a new service given the same id afterwards
    c, svc, _ = hosting
    message = delete_selected_items.send(client_id=c.id, items=items(("service", svc.id)))
    drain()
    session.expunge_all()
    replacement = f.service(session, session.get(Client, c.id), next_due_date=date(2026, 3, 1), id=svc.id,
                            name="New hosting")
    session.commit()

    # When the same message is delivered again
    redeliver(message)
    drain()

    # Then the new service is still there
    session.expire_all()
    assert session.get(Service, replacement.id).name == "New hosting"
    assert dead_letters() == []
