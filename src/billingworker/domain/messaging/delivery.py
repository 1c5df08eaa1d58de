"""Deliver the emails of the outbox (SPEC §14): one path for one email or a hundred.

An outbox row is written in the billing transaction; delivery runs after that transaction
committed, in three steps, each its own transaction:

1. **Claim.** The rows are locked (in id order, so two batches never deadlock), each open row is
   checked (still wanted? renders?) and marked ``sending`` at ``claimed_at``; commit. A row
   already ``sent`` or ``skipped`` is left alone; a row another worker claimed less than the
   claim timeout ago is left to it (``in_flight``); an older claim was left by a dead worker and
   is taken over.
2. **Send**, through one transport session (one SMTP connection for the batch).
3. **Mark.** Right after the transport accepted a message, its row is marked ``sent`` and its
   ``email_log`` row written, and that is committed before the next message goes.

So a crash (a SIGKILLed worker, a lost connection) between "the mail server accepted it" and
"the mark committed" repeats only the emails in flight at that instant: at most one per worker
thread, never a batch. The repeat carries the same Message-ID (``message_id_for``), so a
receiver may drop it. A worker never sends a row whose claim it may have lost: it stops sending
once half the claim timeout has passed since it claimed, and gives the rest back.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from contextlib import nullcontext as _nothing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import Message
from email.utils import parseaddr
from typing import Literal

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.orm import Session

from ...store.outbox_marks import begin_fast_marks, end_fast_marks, mark_sent_and_log
from ..errors import ValidationError
from ..models import EmailLog, OutboxEmail, OutboxStatus
from ..ports import Mailer, send_each
from .emails import RenderCache, RenderedEmail, load_context
from .mime import build_message
from .rendering import render_outbox_email
from .still_wanted import unwanted_emails

log = logging.getLogger(__name__)

DeliveryStatus = Literal["sent", "already_sent", "skipped", "missing", "in_flight", "failed", "retry"]
#: Longest ``last_error`` kept on an outbox row, in characters.
MAX_ERROR_LENGTH = 2000
#: ``email_log.subject`` is VARCHAR(500).
MAX_SUBJECT_LENGTH = 500
#: Emails per delivery message: big enough to share the reads, small enough that one message
#: finishes in a second or two.
EMAIL_BATCH_SIZE = 100
#: A ``sending`` claim older than this was left by a dead worker: the row is delivered again.
#: A worker stops sending its claimed rows after half of it, so a live claim is never taken over.
CLAIM_TIMEOUT = timedelta(seconds=120)


@dataclass(frozen=True)
class DeliveryResult:
    email_id: int
    status: DeliveryStatus
    message_id: str | None = None
    template: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    log_id: int | None = None
    #: Why a row was marked ``failed`` or given back (``retry``).
    error: str = ""


@dataclass(frozen=True)
class BatchDelivery:
    results: tuple[DeliveryResult, ...]

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    @property
    def retry_ids(self) -> tuple[int, ...]:
        """Rows the transport did not take this time (left ``queued``): retry them with backoff."""
        return tuple(r.email_id for r in self.results if r.status == "retry")

    @property
    def failed(self) -> tuple[tuple[int, str], ...]:
        """Rows that can never be rendered (marked ``failed``), with the reason."""
        return tuple((r.email_id, r.error) for r in self.results if r.status == "failed")


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


@dataclass
class _Claimed:
    row_id: int
    client_id: int | None
    rendered: RenderedEmail
    message: Message


def deliver_emails(session: Session, email_ids: Sequence[int], mailer: Mailer, *, sender: str, now: datetime,
                   claim_timeout: timedelta = CLAIM_TIMEOUT) -> BatchDelivery:
    """Send the outbox rows ``email_ids`` that are not sent yet. **Commits** on ``session``: the
    claim before the transport is called, each ``sent`` mark right after (module docstring).

    Call it with no transaction of the caller's open (what is pending is committed with the
    claim). Returns one result per id, in id order: ``sent``; ``already_sent``; ``skipped`` (no
    longer wanted: a reminder whose invoice was paid, a reset link replaced...); ``missing``;
    ``in_flight`` (another worker holds a live claim); ``failed`` (can never be rendered: marked so,
    the relay no longer offers it); ``retry`` (the transport refused it: left ``queued`` with one
    more attempt). A row marked ``failed`` is sent when named: naming it is a deliberate re-send.
    """
    if now.tzinfo is None:
        raise ValidationError("now", now, "must be timezone-aware")
    ids = sorted(set(email_ids))
    results: dict[int, DeliveryResult] = {}
    claimed = _claim(session, ids, sender=sender, now=now, claim_timeout=claim_timeout, results=results)
    session.commit()
    claimed_at = time.monotonic()

    released: list[tuple[int, str]] = []
    outcomes = send_each(mailer, [c.message for c in claimed])
    failure: BaseException | None = None
    marks = _Marks(session.get_bind()) if claimed else None
    try:
        for n, item in enumerate(claimed):
            if time.monotonic() - claimed_at > claim_timeout.total_seconds() / 2:
                # Our claim may soon be taken over: give the rest back rather than risk a twin.
                released += [(c.row_id, "") for c in claimed[n:]]
                break
            error = next(outcomes)
            message_id = str(item.message["Message-ID"])
            if error is None:
                log_id = marks.sent(item, now)
                results[item.row_id] = DeliveryResult(
                    item.row_id, "sent" if log_id is not None else "already_sent", message_id=message_id,
                    template=item.rendered.template, to=tuple(item.rendered.to), cc=tuple(item.rendered.cc),
                    log_id=log_id)
            else:
                reason = f"{type(error).__name__}: {error}"[:MAX_ERROR_LENGTH]
                released.append((item.row_id, reason))
                results[item.row_id] = DeliveryResult(item.row_id, "retry", message_id=message_id,
                                                      template=item.rendered.template, error=reason)
    except BaseException as exc:
        failure = exc
        raise
    finally:
        outcomes.close()
        try:
            if marks is not None:
                marks.close(released)
        except Exception:
            if failure is None:
                raise
            # The first error is the one to report; the claims left behind expire and are relayed.
            log.warning("could not give back %d claimed emails after %s", len(released), type(failure).__name__)
    for row_id, reason in released:
        if not reason:  # given back unsent (claim too old): to be offered again, like a refusal
            results[row_id] = DeliveryResult(row_id, "retry", error="not sent in time: claim given back")
    return BatchDelivery(results=tuple(results[i] for i in ids))


def deliver_email(session: Session, email_id: int, mailer: Mailer, *, sender: str, now: datetime,
                  claim_timeout: timedelta = CLAIM_TIMEOUT) -> DeliveryResult:
    """``deliver_emails`` for one row (a batch of one); commits likewise."""
    return deliver_emails(session, [email_id], mailer, sender=sender, now=now, claim_timeout=claim_timeout).results[0]


def _claim(session: Session, ids: list[int], *, sender: str, now: datetime, claim_timeout: timedelta,
           results: dict[int, DeliveryResult]) -> list[_Claimed]:
    # FOR UPDATE on PostgreSQL; SQLite ignores it, but there the transaction already holds the
    # writer lock (BEGIN IMMEDIATE, see db.py). populate_existing: read the rows as they are now.
    rows = list(session.scalars(
        select(OutboxEmail).where(OutboxEmail.id.in_(ids)).order_by(OutboxEmail.id)
        .with_for_update().execution_options(populate_existing=True)))
    results.update({i: DeliveryResult(i, "missing") for i in set(ids) - {row.id for row in rows}})
    stale_before = now - claim_timeout
    open_rows = []
    for row in rows:
        message_id = message_id_for(row.id, sender)
        if row.status == OutboxStatus.SENT:
            results[row.id] = DeliveryResult(row.id, "already_sent", message_id=message_id, template=row.template)
        elif row.status == OutboxStatus.SKIPPED:
            results[row.id] = DeliveryResult(row.id, "skipped", message_id=message_id, template=row.template)
        elif row.status == OutboxStatus.SENDING and _aware(row.claimed_at) > stale_before:
            results[row.id] = DeliveryResult(row.id, "in_flight", message_id=message_id, template=row.template)
        else:
            open_rows.append(row)

    # A reminder whose invoice was paid (or cancelled) after it was queued (SPEC §5), the notice
    # of an invoice cancelled meanwhile, a reset link replaced or expired: still_wanted.py. A row
    # marked failed is a deliberate re-send and is not second-guessed.
    unwanted = unwanted_emails(session, [(row.id, row.template, _context(row)) for row in open_rows
                                         if row.status != OutboxStatus.FAILED], now=now)
    cache = RenderCache.preload(session, [row for row in open_rows if row.id not in unwanted])
    claimed = []
    for row in open_rows:
        message_id = message_id_for(row.id, sender)
        if row.id in unwanted:
            row.status, row.sent_at = OutboxStatus.SKIPPED, now
            results[row.id] = DeliveryResult(row.id, "skipped", message_id=message_id, template=row.template)
            continue
        try:
            rendered = render_outbox_email(session, row, cache)
            message = build_message(rendered, sender=sender, message_id=message_id, date=now)
        except ValidationError as exc:
            # Can never be rendered (its invoice is gone, no address...): mark it failed.
            reason = f"{type(exc).__name__}: {exc}"[:MAX_ERROR_LENGTH]
            row.attempts = (row.attempts or 0) + 1
            row.last_error = reason
            row.status = OutboxStatus.FAILED
            results[row.id] = DeliveryResult(row.id, "failed", message_id=message_id, template=row.template,
                                             error=reason)
            continue
        row.status, row.claimed_at = OutboxStatus.SENDING, now
        claimed.append(_Claimed(row.id, row.client_id, rendered, message))
    session.flush()
    return claimed


class _Marks:
    """Commits each ``sent`` mark (with its ``email_log`` row) the moment the server accepted the
    message, on one connection held for the batch.

    On PostgreSQL a mark is one statement in autocommit (the update and the log row in one CTE),
    and does not wait for the WAL flush (``synchronous_commit = off``): a mark is safe once the
    server has it, whatever happens to this worker, so the window in which a kill repeats an
    email is one round trip. Only a crash of PostgreSQL itself can lose the last marks (those
    emails are then sent again, with the same Message-ID). Elsewhere: a transaction per mark.
    """

    def __init__(self, bind) -> None:
        self.conn = bind.connect()
        # PostgreSQL: autocommit, one statement per mark (store/outbox_marks.py).
        self.fast = begin_fast_marks(self.conn)

    def sent(self, item: _Claimed, now: datetime) -> int | None:
        """Mark a claimed row ``sent`` and write its log row; None if it was no longer ``sending``
        (a worker that took over a stale claim marked it first: one log row only)."""
        rendered = item.rendered
        subject, body_text, body_html = rendered.for_log()
        values = {"now": now, "outbox_id": item.row_id, "template": rendered.template,
                  "client_id": rendered.client_id if rendered.client_id is not None else item.client_id,
                  "subject": subject[:MAX_SUBJECT_LENGTH], "body_text": body_text, "body_html": body_html,
                  "to_address": ", ".join(rendered.to), "cc": ", ".join(rendered.cc)}
        if self.fast:
            return mark_sent_and_log(self.conn, values)
        with self.conn.begin():
            done = self.conn.execute(update(OutboxEmail.__table__).where(
                OutboxEmail.id == item.row_id, OutboxEmail.status == OutboxStatus.SENDING).values(
                status=OutboxStatus.SENT, sent_at=now))
            if done.rowcount != 1:
                return None
            return self.conn.execute(insert(EmailLog.__table__).values(
                client_id=values["client_id"], outbox_id=item.row_id, template=rendered.template,
                subject=values["subject"], body_text=body_text, body_html=body_html,
                to_address=values["to_address"], cc=values["cc"], sent_at=now)).inserted_primary_key[0]

    def close(self, released: list[tuple[int, str]]) -> None:
        """Give claimed rows back (``queued``): a refusal counts one more attempt and keeps the
        error; then hand the connection back to the pool as it was."""
        try:
            if released:
                if self.conn.in_transaction():
                    self.conn.rollback()
                with self.conn.begin() if not self.fast else _nothing():
                    for row_id, reason in released:
                        values: dict = {"status": OutboxStatus.QUEUED}
                        if reason:
                            values |= {"attempts": OutboxEmail.attempts + 1, "last_error": reason}
                        self.conn.execute(update(OutboxEmail.__table__).where(
                            OutboxEmail.id == row_id, OutboxEmail.status == OutboxStatus.SENDING).values(**values))
            if self.fast:
                end_fast_marks(self.conn)
        finally:
            self.conn.close()


def record_delivery_failure(session: Session, email_id: int, error: str, *,
                            give_up: bool = False) -> int | None:
    """Count a failed delivery of ``email_id``: ``attempts`` + 1 and ``last_error`` = ``error``.

    For an error outside the transport (the database...); the caller commits. ``give_up`` marks
    the row ``failed`` (the relay no longer picks it up). Locks the row; a row sent meanwhile
    is left alone. Returns the attempts so far, or None when the row is gone.
    """
    outbox = session.execute(select(OutboxEmail).where(OutboxEmail.id == email_id).with_for_update()
                             .execution_options(populate_existing=True)).scalar_one_or_none()
    if outbox is None:
        return None
    if outbox.status in (OutboxStatus.SENT, OutboxStatus.SKIPPED):
        return outbox.attempts
    outbox.attempts = (outbox.attempts or 0) + 1
    outbox.last_error = error[:MAX_ERROR_LENGTH]
    if give_up:
        outbox.status = OutboxStatus.FAILED
    session.flush()
    return outbox.attempts


def mark_failed(session: Session, email_id: int, *, attempts_at_least: int, now: datetime,
                claim_timeout: timedelta) -> bool:
    """Mark an unsent row ``failed`` once it counts ``attempts_at_least`` failed attempts (its
    tries are spent); the caller commits. True if this call marked it.

    Left as it is: a row sent or skipped meanwhile; one with fewer failed attempts (waiting for
    its next try, or offered again by ``outbox resend``); and one a worker is sending now (a
    ``sending`` claim younger than ``claim_timeout``: the relay may have offered it again, and
    that delivery must be able to mark it ``sent``). A claim older than that was left by a
    dead worker.
    """
    if now.tzinfo is None:
        raise ValidationError("now", now, "must be timezone-aware")
    dead_claim = or_(OutboxEmail.claimed_at.is_(None), OutboxEmail.claimed_at < (now - claim_timeout).astimezone(UTC))
    claim_left = and_(OutboxEmail.status == OutboxStatus.SENDING, dead_claim)
    marked = session.execute(update(OutboxEmail.__table__).where(
        OutboxEmail.id == email_id, or_(OutboxEmail.status == OutboxStatus.QUEUED, claim_left),
        OutboxEmail.attempts >= attempts_at_least).values(status=OutboxStatus.FAILED))
    return marked.rowcount == 1


def pending_email_ids(session: Session, *, now: datetime, older_than: timedelta,
                      claim_timeout: timedelta = CLAIM_TIMEOUT, client_ids: tuple[int, int] | None = None,
                      mark_relayed: bool = True, after_id: int = 0, limit: int = 1000) -> list[int]:
    """Ids of outbox rows whose delivery message was lost, by id, from ``after_id`` on.

    A row is pending when it is ``queued``, was written (and not re-offered) at least
    ``older_than`` ago, or ``sending`` under a claim older than ``claim_timeout`` (its worker
    died). ``client_ids`` (first, last) narrows it to a range of clients and ignores the age of
    the row (not the time since it was last relayed).
    With ``mark_relayed`` the rows returned get ``relayed_at = now`` (the caller commits), so
    that a row is re-offered at most once per ``older_than``. Rows marked ``failed`` are never pending.
    """
    if now.tzinfo is None:
        raise ValidationError("now", now, "must be timezone-aware")
    # Timestamps are stored in UTC (SQLite keeps them as naive UTC text): compare in UTC.
    cutoff = (now - older_than).astimezone(UTC)
    queued = OutboxEmail.status == OutboxStatus.QUEUED
    stale = and_(OutboxEmail.status == OutboxStatus.SENDING,
                 OutboxEmail.claimed_at < (now - claim_timeout).astimezone(UTC))
    stmt = select(OutboxEmail.id).where(OutboxEmail.id > after_id)
    if client_ids is None:
        stmt = stmt.where(or_(and_(queued, or_(OutboxEmail.created_at.is_(None), OutboxEmail.created_at < cutoff)),
                              stale),
                          or_(OutboxEmail.relayed_at.is_(None), OutboxEmail.relayed_at < cutoff))
    else:
        stmt = stmt.where(or_(queued, stale), OutboxEmail.client_id.between(*client_ids),
                          or_(OutboxEmail.relayed_at.is_(None), OutboxEmail.relayed_at < cutoff))
    ids = list(session.scalars(stmt.order_by(OutboxEmail.id).limit(limit)))
    if ids and mark_relayed:
        session.execute(update(OutboxEmail.__table__).where(OutboxEmail.id.in_(ids)).values(relayed_at=now))
    return ids


def _context(row: OutboxEmail) -> dict:
    """The row's context as a dict ({} when it is not one: the renderer refuses it properly)."""
    try:
        return load_context(row)
    except ValidationError:
        return {}


def _aware(moment: datetime | None) -> datetime:
    """SQLite hands timestamps back without their zone; they were written in UTC."""
    if moment is None:
        return datetime.min.replace(tzinfo=UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
