"""Deliver the emails of the outbox (SPEC §14), once.

An outbox row is written in the billing transaction; ``deliver_email`` sends it after that
transaction committed. The row lock makes two workers delivering the same id send once; the
row's ``status`` makes a redelivered message a no-op. Delivery is at-least-once only across a
crash between "the SMTP server accepted it" and "our commit": the re-send then carries the same
Message-ID (``message_id_for``), so receivers can drop the duplicate.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Literal

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from billingworker.adapters.mailer import Mailer, build_message

from .emails import RenderedEmail, load_context, render_outbox_email
from .errors import ValidationError
from .models import EmailLog, OutboxEmail, OutboxStatus
from .still_wanted import still_wanted

DeliveryStatus = Literal["sent", "already_sent", "skipped", "missing"]
#: Longest ``last_error`` kept on an outbox row, in characters.
MAX_ERROR_LENGTH = 2000
#: ``email_log.subject`` is VARCHAR(500).
MAX_SUBJECT_LENGTH = 500


@dataclass(frozen=True)
class DeliveryResult:
    email_id: int
    status: DeliveryStatus
    message_id: str | None = None
    template: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    log_id: int | None = None


def message_id_for(email_id: int, sender: str) -> str:
    """The Message-ID of outbox row ``email_id``: the same on every (re-)send of that row.

    ``<outbox-12.billingworker@example.com>`` with the sender's domain, else
    ``<outbox-12@billingworker>``.
    """
    address = parseaddr(sender)[1]
    domain = re.sub(r"[^A-Za-z0-9.-]", "", address.rpartition("@")[2]) if "@" in address else ""
    if domain:
        return f"<outbox-{email_id}.billingworker@{domain}>"
    return f"<outbox-{email_id}@billingworker>"


def _lock_outbox(session: Session, email_id: int) -> OutboxEmail | None:
    # FOR UPDATE on PostgreSQL; SQLite ignores it, but there the transaction already holds the
    # writer lock (BEGIN IMMEDIATE, see db.py). populate_existing: read the row as it is now,
    # not as this session may have cached it before the lock was granted.
    return session.execute(
        select(OutboxEmail)
        .where(OutboxEmail.id == email_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).scalar_one_or_none()


def deliver_email(session: Session, email_id: int, mailer: Mailer, *, sender: str,
                  now: datetime) -> DeliveryResult:
    """Send outbox row ``email_id`` unless it was sent already; the caller commits.

    Guarantees:
    - Locks the outbox row until the caller's commit or rollback, so two workers delivering
      the same id send it once: the second waits, then finds it sent (``already_sent``).
    - A row already sent is not sent again (``already_sent``); an unknown id is ``missing``.
    - Otherwise: renders it, writes the ``email_log`` row, marks the row sent at ``now`` and
      flushes, and only then hands the message to ``mailer`` (so a database error cannot
      follow a send). A row parked as ``failed`` is sent too: calling this is a deliberate resend.
    - If rendering or the mailer raises, the exception propagates with nothing recorded: the
      caller rolls back, then calls ``record_delivery_failure`` in a fresh transaction.
    The Message-ID is ``message_id_for(email_id, sender)``, the same on every attempt.
    """
    if now.tzinfo is None:
        raise ValidationError("now", now, "must be timezone-aware")
    outbox = _lock_outbox(session, email_id)
    if outbox is None:
        return DeliveryResult(email_id, "missing")
    message_id = message_id_for(email_id, sender)
    if outbox.status == OutboxStatus.SENT:
        return DeliveryResult(email_id, "already_sent", message_id=message_id, template=outbox.template)
    if outbox.status == OutboxStatus.SKIPPED:
        return DeliveryResult(email_id, "skipped", message_id=message_id, template=outbox.template)

    if outbox.status == OutboxStatus.QUEUED and not still_wanted(
            session, outbox.template, outbox_context(outbox), now=now):
        # A reminder whose invoice was paid (or cancelled) after it was queued (SPEC §5), the
        # notice of an invoice cancelled meanwhile, a reset link replaced or expired: still_wanted.py.
        outbox.status = OutboxStatus.SKIPPED
        outbox.sent_at = now
        session.flush()
        return DeliveryResult(email_id, "skipped", message_id=message_id, template=outbox.template)

    rendered = render_outbox_email(session, outbox)
    message = build_message(rendered, sender=sender, message_id=message_id, date=now)
    log = mark_sent(session, outbox, rendered, now)
    session.flush()

    mailer.send(message)
    return DeliveryResult(
        email_id,
        "sent",
        message_id=message_id,
        template=rendered.template,
        to=tuple(rendered.to),
        cc=tuple(rendered.cc),
        log_id=log.id,
    )


def mark_sent(session: Session, outbox: OutboxEmail, rendered: RenderedEmail, now: datetime) -> EmailLog:
    """Add the ``email_log`` row (with the log redactions applied) and mark the outbox row sent;
    the caller flushes, then hands the message to the mailer."""
    subject, text, html = rendered.for_log()
    log = EmailLog(client_id=rendered.client_id if rendered.client_id is not None else outbox.client_id,
                   outbox_id=outbox.id, template=rendered.template, subject=subject[:MAX_SUBJECT_LENGTH],
                   body_text=text, body_html=html, to_address=", ".join(rendered.to), cc=", ".join(rendered.cc),
                   sent_at=now)
    session.add(log)
    outbox.status = OutboxStatus.SENT
    outbox.sent_at = now
    return log


def record_delivery_failure(session: Session, email_id: int, error: str, *,
                            give_up: bool = False) -> int | None:
    """Count a failed delivery of ``email_id``: ``attempts`` + 1 and ``last_error`` = ``error``.

    Call it in a fresh transaction after rolling back the failed ``deliver_email``; the caller
    commits. ``give_up`` parks the row as ``failed`` (the relay no longer picks it up). Locks
    the row; a row sent meanwhile by another worker is left alone. Returns the attempts so far,
    or None when the row is gone.
    """
    outbox = _lock_outbox(session, email_id)
    if outbox is None:
        return None
    if outbox.status == OutboxStatus.SENT:
        return outbox.attempts
    outbox.attempts = (outbox.attempts or 0) + 1
    outbox.last_error = error[:MAX_ERROR_LENGTH]
    if give_up:
        outbox.status = OutboxStatus.FAILED
    session.flush()
    return outbox.attempts


def pending_email_ids(session: Session, *, created_before: datetime, limit: int = 1000) -> list[int]:
    """Ids of queued outbox rows created before ``created_before``, oldest first.

    For the relay that re-enqueues what a crash left behind: rows still ``queued`` although
    their transaction committed a while ago. Rows parked as ``failed`` are not returned. Reads only.
    """
    if created_before.tzinfo is None:
        raise ValidationError("created_before", created_before, "must be timezone-aware")
    # created_at is stored in UTC (SQLite keeps it as naive UTC text): compare in UTC.
    cutoff = created_before.astimezone(UTC)
    return list(
        session.scalars(
            select(OutboxEmail.id)
            .where(
                OutboxEmail.status == OutboxStatus.QUEUED,
                or_(OutboxEmail.created_at.is_(None), OutboxEmail.created_at < cutoff),
            )
            .order_by(OutboxEmail.created_at, OutboxEmail.id)
            .limit(limit)
        )
    )


def outbox_context(outbox: OutboxEmail) -> dict:
    """The row's context as a dict ({} when it is not one: the renderer refuses it properly)."""
    try:
        return load_context(outbox)
    except ValidationError:
        return {}
