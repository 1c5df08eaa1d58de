"""Service jobs (docs/jobs.md): mass update with prorata, server-module commands, delete
selected items. Thin: validate, one unit of work, commit, then enqueue what follows."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial

from dramatiq import Message

from ..adapters.server_module import module_for
from ..domain import accounts
from ..domain.accounts.mass_update import MASS_UPDATE_TYPES
from ..domain.accounts.module_commands import (
    MODULE_ITEM_TYPES,
    QueuedCommand,
    parse_module_command,
    parse_module_params,
    pending_module_command_ids,
    queued_commands,
    record_module_command,
    record_module_error,
    run_queued_command,
)
from ..domain.billing import thing_removal
from ..domain.billing.thing_removal import REMOVABLE_TYPES
from ..domain.errors import ValidationError
from ..domain.failures import ClientFailure, record_failures
from ..domain.receipts import run_once
from ..runtime import runtime
from .arguments import argument_rules, check_characters, parse_bool, parse_count, parse_id, parse_items
from .base import current_message_id, job, last_attempt, once_per_message, receipt_key
from .emails import delivery_messages
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

#: A module command still queued this long after it was written lost its message.
RELAY_AFTER = timedelta(minutes=5)


def command_messages(commands: list[QueuedCommand]) -> list[Message]:
    """The messages that run queued module commands (for ``UnitOfWork.send_after_commit``)."""
    return [run_module_command.message(**command.message()) for command in commands]


@job()
@argument_rules(client_id=parse_id, items=partial(parse_items, allowed=MASS_UPDATE_TYPES),
                create_prorata_invoice=parse_bool, send_email=parse_bool)
def mass_update(client_id, items, changes, create_prorata_invoice=False, send_email=True, request_id=None):
    """Change several things of one client at once (SPEC §9); one transaction, run once per
    message (or ``request_id``): its module commands are queued once, its prorata invoiced once."""
    client_id = parse_id("client_id", client_id)
    wanted = parse_items("items", items, MASS_UPDATE_TYPES)
    if not isinstance(changes, dict):
        raise ValidationError("changes", changes, "must be a JSON object of the fields to change")
    for name, value in changes.items():
        check_characters(f"changes.{name}", value)
    create_prorata_invoice = parse_bool("create_prorata_invoice", create_prorata_invoice)
    send_email = parse_bool("send_email", send_email)
    key = receipt_key("mass_update", request_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        def update():
            done = accounts.mass_update.mass_update(work.session, client_id, wanted, changes,
                                                    create_prorata_invoice=create_prorata_invoice,
                                                    as_of=rt.clock.today(), now=rt.clock.now(), request_key=key,
                                                    queue_email=send_email)
            work.send_after_commit(*delivery_messages(done.email_ids), *command_messages(done.commands))
            return done.summary()

        # A redelivery finds the receipt and sends nothing: rows a crash left unsent go out
        # through relay_module_commands / relay_outbox.
        result, _ = run_once(work.session, key, "mass_update", update)
        work.commit()
    return result


@job()
@argument_rules(client_id=parse_id, items=partial(parse_items, allowed=REMOVABLE_TYPES))
def delete_selected_items(client_id, items):
    """Remove the selected things' records (no module command); a second run deletes nothing."""
    client_id = parse_id("client_id", client_id)
    wanted = parse_items("items", items, REMOVABLE_TYPES)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        # Once per message: on SQLite a new thing can be given a deleted thing's id, and a
        # redelivered message must never delete that one.
        summary = once_per_message(work.session, "delete_selected_items", lambda: thing_removal.delete_selected_items(
            work.session, client_id, wanted).summary())
        work.commit()
    return summary


@job(calls_outside=True)
@argument_rules(item_id=parse_id)
def run_module_command(item_type, item_id, command, command_id=None, params=None, request_id=None):
    """Run one server-module command once.

    With ``command_id`` (sent by the worker after the deciding job committed) it runs that
    ``module_commands`` row; without one (an application asks directly) it first records a row,
    once per message id or ``request_id``, then runs it. A row that already succeeded is skipped.
    """
    if item_type not in MODULE_ITEM_TYPES:
        raise ValidationError("item_type", item_type, f"is not one of {', '.join(MODULE_ITEM_TYPES)}")
    item_id = parse_id("item_id", item_id)
    command = parse_module_command("command", command)
    rt = runtime()
    if command_id is None:
        params = parse_module_params("params", params)
        key = receipt_key("run_module_command", request_id)
        with UnitOfWork(rt.engine) as work:
            queued = record_module_command(work.session, item_type, item_id, command, params, request_key=key,
                                           now=rt.clock.now())
            work.commit()
        command_id = queued.command_id
    else:
        command_id = parse_id("command_id", command_id)
    try:
        with UnitOfWork(rt.engine) as work:
            run = run_queued_command(work.session, command_id, module_for=module_for, now=rt.clock.now(),
                                     expect=(item_type, item_id, command), as_of=rt.clock.today())
            if run.outcome == "failed":
                record_failures(work.session, [ClientFailure(run.client_id, "command_id", command_id,
                                                        f"{command} of {item_type} {item_id} failed: {run.message}",
                                                        parks=False)],
                                actor="run_module_command", message_id=current_message_id(), now=rt.clock.now(),
                                error="ModuleCommandFailed")
            work.commit()
    except ValidationError:
        raise  # bad input (unknown row, a message that does not match it): dead-lettered, nothing to count
    except Exception as exc:
        # The module raised (unreachable, timed out): count the attempt in its own transaction,
        # then let Dramatiq retry with backoff; after the last retry the row is failed.
        with UnitOfWork(rt.engine) as work:
            record_module_error(work.session, command_id, f"{type(exc).__name__}: {exc}",
                                give_up=last_attempt(run_module_command),
                                now=rt.clock.now())
            work.commit()
        raise
    return {"command_id": command_id, "outcome": run.outcome, "message": run.message}


@job()
@argument_rules(limit=parse_id)
def relay_module_commands(limit=1000, older_than_seconds=None):
    """Re-enqueue module commands still queued ``older_than_seconds`` (default 300) after they were
    written (a crash between the commit and the enqueue). Sending one twice runs it once."""
    limit = parse_id("limit", limit)
    age = RELAY_AFTER if older_than_seconds is None else timedelta(
        seconds=parse_count("older_than_seconds", older_than_seconds))
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        commands = queued_commands(work.session, pending_module_command_ids(
            work.session, created_before=rt.clock.now() - age, limit=limit))
        work.send_after_commit(*command_messages(commands))
        work.commit()
    return {"relayed": len(commands)}
