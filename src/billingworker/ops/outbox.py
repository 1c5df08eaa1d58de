"""The email outbox as an operator sees it: which emails were not delivered and why, and a
resend of them (``billingworker outbox list|resend``, the console's Outbox page).

Reading is plain SQL over ``email_outbox`` (and the client's address). A resend is the domain's
``resend_emails`` in one unit of work, and the delivery messages go out only after its commit.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ..clock import as_utc
from ..db import unit_of_work
from ..domain.messaging.outbox_resend import RESEND_PAGE, Resend, failed_email_ids, resend_emails
from ..domain.models import Client, OutboxEmail, OutboxStatus
from ..domain.redaction import mask, mask_text

#: The statuses ``outbox list --status`` takes.
STATUSES = tuple(s.value for s in OutboxStatus)
#: What ``list`` shows by default: what an operator has to act on.
UNDELIVERED = (OutboxStatus.FAILED.value, OutboxStatus.SKIPPED.value)
ERROR_LIMIT = 300


@dataclass(frozen=True)
class OutboxRow:
    id: int
    client_id: int | None
    #: The client's address, its local part masked (``ad***@example.com``): enough to recognise it.
    to: str
    template: str
    #: The ids the template is rendered with (``{"invoice_id": 12}``), masked.
    context: Any
    status: str
    attempts: int
    error: str
    created_at: datetime | None
    #: The last time a worker or the relay touched the row (claimed, sent, re-offered).
    updated_at: datetime | None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat() if self.created_at else None
        data["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return data


def masked_address(address: str | None) -> str:
    """``ada@example.com`` as ``ad***@example.com``; an address without ``@`` as ``***``."""
    if not address:
        return ""
    local, at, domain = address.rpartition("@")
    if not at:
        return "***"
    return f"{local[:2]}***@{mask_text(domain)}"


def list_outbox(session: Session, *, statuses: Sequence[str] = UNDELIVERED, client_id: int | None = None,
                limit: int = 100) -> list[OutboxRow]:
    """Outbox rows of ``statuses`` (of one client, if given), the most recent first."""
    stmt = (select(OutboxEmail, Client.email).outerjoin(Client, Client.id == OutboxEmail.client_id)
            .where(OutboxEmail.status.in_(list(statuses))).order_by(OutboxEmail.id.desc()).limit(limit))
    if client_id is not None:
        stmt = stmt.where(OutboxEmail.client_id == client_id)
    rows = []
    for email, address in session.execute(stmt).all():
        touched = [as_utc(t) for t in (email.claimed_at, email.sent_at, email.relayed_at) if t is not None]
        error = email.last_error or ("no longer wanted when its turn came (e.g. its invoice was paid)"
                                     if email.status == OutboxStatus.SKIPPED else "")
        rows.append(OutboxRow(email.id, email.client_id, masked_address(address), email.template,
                              mask(_context(email.context)), email.status, email.attempts or 0,
                              mask_text(error, ERROR_LIMIT), as_utc(email.created_at),
                              max(touched) if touched else as_utc(email.created_at)))
    return rows


def count_by_status(session: Session) -> dict[str, int]:
    """Outbox rows per status (every status, 0 included)."""
    counts = dict(session.execute(select(OutboxEmail.status, func.count()).group_by(OutboxEmail.status)).all())
    return {status: counts.get(status, 0) for status in STATUSES}


def _context(raw: str) -> Any:
    try:
        return json.loads(raw)
    except (ValueError, TypeError):
        return raw


@dataclass(frozen=True)
class ResendDone(Resend):
    """What a resend did (``Resend``), and ``warning``: set when the delivery messages could not
    be enqueued after the commit (the broker did not answer). The rows are ``queued`` all the
    same, and the scheduler's relay offers every queued row again (``relay_outbox``), so they are
    delivered once the broker answers: the resend is done, its delivery late."""

    warning: str | None = None


#: When the relay re-offers a queued row: ``relayed_at`` (the resend's ``now``) plus the relay's
#: wait (60 s, ``actors.emails.RELAY_AFTER``), at the scheduler's next relay (every 60 s).
RELAY_NOTE = "the scheduler's relay delivers them within about two minutes once the broker answers"


def send_after_commit(email_ids: Sequence[int]) -> None:
    """Enqueue the delivery of outbox rows, as the jobs do after their commit (``UnitOfWork``)."""
    from ..actors.emails import enqueue_delivery
    from ..bootstrap import current_app

    current_app()  # the jobs bound to the broker of BROKER_URL
    enqueue_delivery(email_ids)


def resend(engine: Engine, *, now: datetime, email_ids: Sequence[int] = (), all_failed: bool = False,
           client_id: int | None = None, send: Callable[[Sequence[int]], None] = send_after_commit) -> ResendDone:
    """Put failed (and, by id, skipped) emails back to ``queued`` in one transaction, commit, then
    ``send`` their delivery messages. ``all_failed``: every failed row (of ``client_id``), page
    by page. A row already queued, sending or sent is left as it is (``Resend.left``).

    A ``send`` that fails after the commit does not undo it nor raise: the rows stay queued and
    the relay delivers them; ``ResendDone.warning`` says so (no more sends are tried then)."""
    failed: list[str] = []

    def deliver(ids: Sequence[int]) -> None:
        if failed:  # the broker did not answer a moment ago: the relay takes the rest too
            return
        try:
            send(ids)
        except Exception as exc:  # noqa: BLE001 - the broker's errors vary (Redis, AMQP); the relay recovers
            failed.append(f"{type(exc).__name__}: {mask_text(str(exc).splitlines()[0] if str(exc) else '', 200)}")

    if all_failed:
        # Page by page in id order, each page its own transaction and its messages sent after
        # its commit; an email failing again meanwhile is not taken twice (ids only grow).
        queued: list[int] = []
        after = 0
        while True:
            with unit_of_work(engine) as session:
                ids = failed_email_ids(session, client_id=client_id, after_id=after)
                page = resend_emails(session, ids, now=now)
                session.commit()
            deliver(page.queued)
            queued += page.queued
            if len(ids) < RESEND_PAGE:
                return _done(tuple(queued), {}, failed)
            after = ids[-1]
    with unit_of_work(engine) as session:
        done = resend_emails(session, email_ids, now=now)
        session.commit()
    deliver(done.queued)
    return _done(done.queued, done.left, failed)


def _done(queued: tuple[int, ...], left: dict[int, str], failed: list[str]) -> ResendDone:
    warning = (f"queued {len(queued)}; the broker did not answer ({failed[0]}): {RELAY_NOTE}"
               if failed else None)
    return ResendDone(tuple(queued), left, warning)
