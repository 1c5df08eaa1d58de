"""An operator's resend of outbox emails that were not delivered (``billingworker outbox resend``).

A ``failed`` row (it could not be rendered, or its retries were spent) or a ``skipped`` one (no
longer wanted when its turn came: a reminder whose invoice was paid) goes back to ``queued``;
the caller commits, then enqueues the delivery of the ids returned (never before the commit:
a worker would find the row still failed). Delivery then treats it like any queued row: it is
re-checked (``still_wanted``), so a skipped reminder whose invoice is still paid is skipped
again rather than sent, and a failed reminder whose invoice was paid meanwhile is not sent.

The rows are locked (``FOR UPDATE``, in id order) and only a row still ``failed``/``skipped``
under the lock changes: of two operators resending the same email, the second finds it queued
and leaves it; a row a worker is sending or has sent is never touched. And delivery claims each
row under the same lock, so even two delivery messages for one row send it once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..errors import ValidationError
from ..models import OutboxEmail, OutboxStatus

#: The statuses a resend takes back to ``queued``.
RESENDABLE = (OutboxStatus.FAILED, OutboxStatus.SKIPPED)
#: Failed rows one page of a resend of every failed email takes (one transaction each).
RESEND_PAGE = 1000


@dataclass(frozen=True)
class Resend:
    """What a resend did. ``queued`` are to be delivered after the commit; ``left`` gives, per id
    asked for and not queued, its status (``sent``, ``queued``, ``sending``) or ``missing``."""

    queued: tuple[int, ...] = ()
    left: dict[int, str] = field(default_factory=dict)


def resend_emails(session: Session, email_ids: Sequence[int], *, now: datetime) -> Resend:
    """Put the ``failed`` and ``skipped`` rows among ``email_ids`` back to ``queued`` (row locks,
    id order); the caller commits, then sends the ``queued`` ids. ``now`` becomes their
    ``relayed_at``, so the relay does not offer them again before the message just sent had its chance."""
    if now.tzinfo is None:
        raise ValidationError("now", now, "must be timezone-aware")
    ids = sorted(set(email_ids))
    rows = {row.id: row for row in session.scalars(
        select(OutboxEmail).where(OutboxEmail.id.in_(ids)).order_by(OutboxEmail.id)
        .with_for_update().execution_options(populate_existing=True))}
    queued, left = [], {}
    for email_id in ids:
        row = rows.get(email_id)
        if row is None:
            left[email_id] = "missing"
        elif row.status in RESENDABLE:
            row.status = OutboxStatus.QUEUED
            row.relayed_at = now
            # Its tries count afresh: the give-up after the last one needs as many failures again.
            row.attempts = 0
            queued.append(email_id)
        else:
            left[email_id] = row.status
    session.flush()
    return Resend(tuple(queued), left)


def failed_email_ids(session: Session, *, client_id: int | None = None, after_id: int = 0,
                     limit: int = RESEND_PAGE) -> list[int]:
    """Ids of the ``failed`` rows (of one client, if given) after ``after_id``, by id, at most
    ``limit``: the pages of a resend of every failed email. Skipped rows are not included: they
    were left out on purpose; an operator resends them by id."""
    stmt = select(OutboxEmail.id).where(OutboxEmail.status == OutboxStatus.FAILED, OutboxEmail.id > after_id)
    if client_id is not None:
        stmt = stmt.where(OutboxEmail.client_id == client_id)
    return list(session.scalars(stmt.order_by(OutboxEmail.id).limit(limit)))
