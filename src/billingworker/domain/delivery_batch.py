"""Deliver a batch of outbox emails in one transaction (SPEC §14): the fast path of a daily run.

``deliver_email`` (one row, one transaction) stays the path for a single email and for retries;
a billing job that queued many emails hands them over in batches instead, so that the rows a
template needs are read once per batch, the email log is written in one flush, and an SMTP
server sees one connection per batch. The guarantees are those of ``deliver_email``:

- the outbox rows are locked (in id order, so two batches never deadlock) until the caller
  commits: two workers delivering the same ids send each email once;
- a row already sent (or skipped) is not sent again;
- the email log rows and the ``sent`` marks are flushed *before* the mailer is called, so a
  database error cannot follow a send; a message the mailer refused is then taken back out
  (its log row deleted, the row left queued with one more attempt) and reported ``retry``;
- a crash between the send and the commit re-sends with the same Message-ID.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from billingworker.adapters.mailer import Mailer, build_message, send_all

from .delivery import MAX_ERROR_LENGTH, DeliveryResult, mark_sent, message_id_for, outbox_context
from .emails import RenderCache, render_outbox_email
from .errors import ValidationError
from .models import OutboxEmail, OutboxStatus
from .still_wanted import unwanted_emails

#: Emails per delivery message: big enough to share the reads, small enough that one message
#: finishes in a second or two and a retry repeats little.
EMAIL_BATCH_SIZE = 100


@dataclass(frozen=True)
class BatchDelivery:
    results: tuple[DeliveryResult, ...]
    #: Ids the mailer refused this time (left queued): the caller retries them one by one.
    retry_ids: tuple[int, ...]
    #: Ids that can never be rendered (parked as ``failed``), with the reason.
    failed: tuple[tuple[int, str], ...]

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)


def deliver_emails(session: Session, email_ids: Sequence[int], mailer: Mailer, *, sender: str,
                   now: datetime) -> BatchDelivery:
    """Send the outbox rows ``email_ids`` that are not sent yet; the caller commits.

    Locks the rows until the commit. Returns one result per id (``sent``, ``already_sent``,
    ``skipped``, ``missing``, ``failed`` for a row that cannot be rendered, ``retry`` for a row
    the mailer refused).
    """
    if now.tzinfo is None:
        raise ValidationError("now", now, "must be timezone-aware")
    ids = sorted(set(email_ids))
    rows = list(session.scalars(
        select(OutboxEmail).where(OutboxEmail.id.in_(ids)).order_by(OutboxEmail.id)
        .with_for_update().execution_options(populate_existing=True)))
    found = {row.id for row in rows}
    results: dict[int, DeliveryResult] = {i: DeliveryResult(i, "missing") for i in ids if i not in found}
    failed: list[tuple[int, str]] = []

    unwanted = unwanted_emails(session, [(row.id, row.template, outbox_context(row)) for row in rows
                                         if row.status == OutboxStatus.QUEUED], now=now)
    open_rows = []
    for row in rows:
        message_id = message_id_for(row.id, sender)
        if row.status == OutboxStatus.SENT:
            results[row.id] = DeliveryResult(row.id, "already_sent", message_id=message_id, template=row.template)
        elif row.status == OutboxStatus.SKIPPED:
            results[row.id] = DeliveryResult(row.id, "skipped", message_id=message_id, template=row.template)
        elif row.status == OutboxStatus.QUEUED and row.id in unwanted:
            # A reminder whose invoice was paid (or cancelled) after it was queued (SPEC §5), or
            # the notice of an invoice cancelled meanwhile.
            row.status = OutboxStatus.SKIPPED
            row.sent_at = now
            results[row.id] = DeliveryResult(row.id, "skipped", message_id=message_id, template=row.template)
        else:
            open_rows.append(row)

    cache = RenderCache.preload(session, open_rows)
    outgoing = []
    for row in open_rows:
        message_id = message_id_for(row.id, sender)
        try:
            rendered = render_outbox_email(session, row, cache)
            message = build_message(rendered, sender=sender, message_id=message_id, date=now)
        except ValidationError as exc:
            # Cannot ever be rendered (its invoice is gone...): park it, as deliver_email does.
            reason = f"{type(exc).__name__}: {exc}"
            row.attempts = (row.attempts or 0) + 1
            row.last_error = reason[:MAX_ERROR_LENGTH]
            row.status = OutboxStatus.FAILED
            failed.append((row.id, reason))
            results[row.id] = DeliveryResult(row.id, "failed", message_id=message_id, template=row.template)
            continue
        outgoing.append((row, rendered, message, mark_sent(session, row, rendered, now)))
    session.flush()

    retry: list[int] = []
    outcomes = send_all(mailer, [message for _, _, message, _ in outgoing])
    for (row, rendered, message, log), error in zip(outgoing, outcomes, strict=True):
        if error is None:
            results[row.id] = DeliveryResult(row.id, "sent", message_id=str(message["Message-ID"]),
                                             template=rendered.template, to=tuple(rendered.to),
                                             cc=tuple(rendered.cc), log_id=log.id)
            continue
        session.delete(log)
        row.status = OutboxStatus.QUEUED
        row.sent_at = None
        row.attempts = (row.attempts or 0) + 1
        row.last_error = f"{type(error).__name__}: {error}"[:MAX_ERROR_LENGTH]
        retry.append(row.id)
        results[row.id] = DeliveryResult(row.id, "retry", message_id=str(message["Message-ID"]),
                                         template=rendered.template)
    session.flush()
    return BatchDelivery(results=tuple(results[i] for i in ids), retry_ids=tuple(retry), failed=tuple(failed))

