"""Overdue reminders (SPEC §5): the unpaid invoice reminder before the due date, then the first,
second and third overdue notices after it, each at most once per invoice, ever.

A day the run missed is caught up with the latest stage that is due only: the earlier stages get
a ``skipped`` row in ``invoice_reminders`` and are never sent later, so a client never receives
a burst of notices. The client row locks serialise workers; the ``invoice_reminders`` primary key
(and the outbox's dedupe key) is the final guard against a second notice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence, Set
from dataclasses import dataclass
from datetime import date, timedelta

from sqlalchemy import and_, exists, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ...store.arrays import among
from ..billing.invoice_store import lock_clients
from ..failures import ClientFailure
from ..messaging.outbox import QueuedEmail, queue_emails
from ..models import Client, ClientStatus, Invoice, InvoiceKind, InvoiceReminder, InvoiceStatus, ReminderStage
from ..settings import BillingSettings, load_settings
from ..tasks import TaskResult

log = logging.getLogger(__name__)

TASK = "send_overdue_reminders"
#: The stages in the order they fall due.
STAGES: tuple[ReminderStage, ...] = tuple(ReminderStage)
SENT = "sent"
SKIPPED = "skipped"


def stage_dates(date_due: date, settings: BillingSettings) -> dict[ReminderStage, date]:
    """The day each enabled stage falls due, in stage order; a setting of 0 (or less) is off."""
    out: dict[ReminderStage, date] = {}
    if settings.unpaid_reminder_days > 0:
        out[ReminderStage.UNPAID] = date_due - timedelta(days=settings.unpaid_reminder_days)
    for stage, days in ((ReminderStage.FIRST_OVERDUE, settings.first_overdue_reminder_days),
                        (ReminderStage.SECOND_OVERDUE, settings.second_overdue_reminder_days),
                        (ReminderStage.THIRD_OVERDUE, settings.third_overdue_reminder_days)):
        if days > 0:
            out[stage] = date_due + timedelta(days=days)
    return out


def reminder_due(date_due: date, date_created: date, as_of: date, settings: BillingSettings,
                 done: Set[str] = frozenset()) -> tuple[ReminderStage, tuple[ReminderStage, ...]] | None:
    """The stage to send on ``as_of`` and the earlier stages to mark skipped, or None.

    The stage is the latest enabled one whose day has come; nothing is sent if it or a later
    stage is already in ``done`` (stage values with a row). The unpaid reminder is not due for an
    invoice created on or after its day: the "invoice created" email already told the client.
    """
    dates = stage_dates(date_due, settings)
    due = [stage for stage, day in dates.items()
           if day <= as_of and not (stage is ReminderStage.UNPAID and date_created >= day)]
    if not due:
        return None
    latest = due[-1]
    position = STAGES.index(latest)
    if any(stage.value in done for stage in STAGES[position:]):
        return None
    skipped = tuple(stage for stage in dates if STAGES.index(stage) < position and stage.value not in done)
    return latest, skipped


@dataclass(frozen=True)
class _Reminder:
    client_id: int
    invoice_id: int
    stage: ReminderStage
    skipped: tuple[ReminderStage, ...]

    def email(self) -> QueuedEmail:
        return QueuedEmail(self.stage.value, self.client_id, {"invoice_id": self.invoice_id},
                           dedupe_key=f"{self.stage.value}:{self.invoice_id}")

    def line(self) -> dict:
        return {"client_id": self.client_id, "invoice_id": self.invoice_id, "stage": self.stage.value,
                "skipped": [s.value for s in self.skipped]}


def send_overdue_reminders_for_clients(session: Session, client_ids: Sequence[int], as_of: date, *,
                               dry_run: bool = False) -> TaskResult:
    """Queue the reminder each Unpaid invoice of ``client_ids`` is due on ``as_of``; the caller commits.

    Locks the clients' rows. Idempotent: a stage is sent at most once per invoice, ever, however
    often or concurrently this runs. With ``dry_run`` the same reminders are chosen and listed in
    ``preview``, and nothing is written.
    """
    result = TaskResult(task=TASK)
    clients = lock_clients(session, client_ids)
    result.clients = len(clients)
    result.succeeded_clients = set(clients)
    if not clients:
        return result
    settings = load_settings(session)
    reminders = _plan(session, sorted(clients), as_of, settings)
    if dry_run or not reminders:
        result.preview += [r.line() for r in reminders]
        return result
    try:
        with session.begin_nested():
            _write(session, reminders, as_of, result)
    except _integrity_errors(session) as exc:
        # Rows we did not expect (another application, a lost lock): redo client by client on a
        # fresh read, so a clash costs one client, and a stage someone else sent is not resent.
        log.warning("reminders batch write failed (%s); retrying client by client", exc.__class__.__name__)
        for client_id in sorted({r.client_id for r in reminders}):
            try:
                with session.begin_nested():
                    _write(session, _plan(session, [client_id], as_of, settings), as_of, result)
            except _integrity_errors(session) as exc_one:
                reason = getattr(exc_one, "orig", None) or exc_one
                result.failures.append(ClientFailure(client_id, "invoice_reminders", None,
                                                     f"could not be recorded: {reason}"))
                result.succeeded_clients.discard(client_id)
    return result


def _integrity_errors(session: Session) -> tuple[type[Exception], ...]:
    # The outbox is written with COPY on PostgreSQL, whose errors come from the driver unwrapped.
    dbapi = session.get_bind().dialect.loaded_dbapi
    return (IntegrityError, dbapi.IntegrityError)


def _plan(session: Session, client_ids: Sequence[int], as_of: date, settings: BillingSettings) -> list[_Reminder]:
    """One query for the candidate invoices of the batch, one for their reminder rows."""
    enabled = stage_dates(as_of, settings)
    if not enabled:
        return []
    offsets = [(day - as_of).days for day in enabled.values()]
    # Invoices not yet at their first enabled stage cannot be due anything.
    horizon = as_of - timedelta(days=min(offsets))
    last_stage = list(enabled)[-1]
    invoices = session.execute(
        select(Invoice.id, Invoice.client_id, Invoice.date_due, Invoice.date_created)
        .join(Client, Client.id == Invoice.client_id)
        .where(among(session, Invoice.client_id, client_ids), Client.send_overdue_reminders.is_(True),
               Client.status != ClientStatus.CLOSED, Invoice.status == InvoiceStatus.UNPAID,
               Invoice.kind == InvoiceKind.STANDARD, Invoice.date_due <= horizon,
               # Once the last enabled stage has a row, nothing more is ever due.
               ~exists().where(and_(InvoiceReminder.invoice_id == Invoice.id,
                                    InvoiceReminder.stage == last_stage.value)))
        .order_by(Invoice.client_id, Invoice.id)).all()
    if not invoices:
        return []
    done: dict[int, set[str]] = {}
    for invoice_id, stage in session.execute(
            select(InvoiceReminder.invoice_id, InvoiceReminder.stage)
            .where(among(session, InvoiceReminder.invoice_id, [i.id for i in invoices]))):
        done.setdefault(invoice_id, set()).add(stage)
    out = []
    for inv in invoices:
        due = reminder_due(inv.date_due, inv.date_created, as_of, settings, done.get(inv.id, set()))
        if due is not None:
            out.append(_Reminder(inv.client_id, inv.id, *due))
    return out


def _write(session: Session, reminders: Sequence[_Reminder], as_of: date, result: TaskResult) -> None:
    if not reminders:
        return
    email_ids = queue_emails(session, [r.email() for r in reminders])
    rows = []
    for reminder, email_id in zip(reminders, email_ids, strict=True):
        rows.append({"invoice_id": reminder.invoice_id, "stage": reminder.stage.value, "status": SENT,
                     "sent_on": as_of, "outbox_id": email_id})
        rows += [{"invoice_id": reminder.invoice_id, "stage": stage.value, "status": SKIPPED, "sent_on": as_of,
                  "outbox_id": None} for stage in reminder.skipped]
    # A plain INSERT (not COPY): the primary key's refusal arrives as an IntegrityError. The Core
    # table, not the ORM entity: the ORM groups rows by the keys whose value is not None, and the
    # sent and skipped rows alternate, which would make it one INSERT per row.
    session.execute(insert(InvoiceReminder.__table__), rows)
    result.email_ids += email_ids
    result.preview += [r.line() for r in reminders]
