"""Email delivery jobs (docs/jobs.md): deliver one outbox email or a batch (one path: a single
email is a batch of one), give up on an email whose retries are spent, and relay what a crash
or a lost message left in the outbox."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import timedelta
from functools import partial
from typing import Any

from dramatiq import Message

from ..db import session_factory
from ..domain.errors import ValidationError
from ..domain.messaging import delivery
from ..domain.messaging.delivery import (
    EMAIL_BATCH_SIZE,
    BatchDelivery,
    pending_email_ids,
    record_delivery_failure,
)
from ..queue_names import EMAIL_QUEUE
from ..runtime import runtime
from .arguments import argument_rules, parse_id, parse_id_list, parse_optional_id
from .base import EMAIL_PRIORITY, job
from .binding import bound_broker
from .unit_of_work import UnitOfWork

log = logging.getLogger(__name__)

#: An outbox row still queued this long after it was written (or last relayed) lost its delivery
#: message: short, so that a broker restart costs a minute, not an hour. A row whose message is
#: merely slow is offered twice at worst, and sent once (the claim).
RELAY_AFTER = timedelta(seconds=60)
#: Rows the relay reads per transaction while it drains the outbox.
RELAY_PAGE = 1000


#: The internal job Dramatiq's Retries sends once ``deliver_email``'s last retry failed.
GIVE_UP_JOB = "give_up_email_delivery"


class EmailNotAccepted(Exception):  # noqa: N818 - reads as the outcome it reports
    """The mail transport did not take the message this time (transient: retried with backoff)."""


def _deliver(email_ids: list[int]) -> BatchDelivery:
    rt = runtime()
    with session_factory(rt.engine)() as session:
        return delivery.deliver_emails(session, email_ids, rt.mailer, sender=rt.mail_from, now=rt.clock.now(),
                       claim_timeout=rt.email_claim_timeout)


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY, on_retry_exhausted=GIVE_UP_JOB, calls_outside=True)
@argument_rules(email_id=parse_id)
def deliver_email(email_id):
    """Send one outbox email (a batch of one); a sent email is never resent.

    Every failed attempt the database can record counts on the row (``attempts``); once the
    last retry failed, Dramatiq sends ``give_up_email_delivery``, which marks the row failed.
    """
    email_id = parse_id("email_id", email_id)
    rt = runtime()
    try:
        result = _deliver([email_id]).results[0]
    except BaseException as exc:  # also the time limit (a BaseException), so that every try counts
        # Not the transport (the database...): count the attempt, let Dramatiq retry. If the
        # database cannot even count it, the row stays offered: the relay offers it again.
        with UnitOfWork(rt.engine) as work:
            record_delivery_failure(work.session, email_id, f"{type(exc).__name__}: {exc}")
            work.commit()
        raise
    if result.status == "failed":
        raise ValidationError("email_id", email_id, f"cannot be delivered: {result.error}")
    if result.status == "retry":
        raise EmailNotAccepted(result.error)
    return {"email_id": email_id, "status": result.status}


def _retried_email_id(message_data: Any) -> int:
    """The ``email_id`` of the ``deliver_email`` message whose retries are spent."""
    if not isinstance(message_data, dict) or message_data.get("actor_name") != "deliver_email":
        raise ValidationError("message_data", message_data, "must be the deliver_email message whose retries are spent")
    args, kwargs = message_data.get("args") or [], message_data.get("kwargs") or {}
    if not isinstance(args, list | tuple) or not isinstance(kwargs, dict):
        raise ValidationError("message_data", message_data, "must carry args (a list) and kwargs (an object)")
    return parse_id("message_data.email_id", kwargs["email_id"] if "email_id" in kwargs else (args or [None])[0])


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY)
def give_up_email_delivery(message_data, retry_info=None):
    """Internal: sent by Dramatiq's Retries when ``deliver_email``'s last retry failed; marks the
    email failed (the relay stops offering it; ``outbox resend`` offers it again).

    Trusts nothing it is given: the row is marked failed only if it is still unsent and counts
    at least as many failed attempts as ``deliver_email`` has tries (its ``max_retries`` + 1),
    so a forged message cannot fail an email that is merely waiting for its next try.
    """
    email_id = _retried_email_id(message_data)
    tries = deliver_email.options.get("max_retries", 0) + 1
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        gave_up = delivery.mark_failed(work.session, email_id, attempts_at_least=tries, now=rt.clock.now(),
                                       claim_timeout=rt.email_claim_timeout)
        work.commit()
    if gave_up:
        log.warning("email %s: its %d tries failed; marked failed", email_id, tries)
    return {"email_id": email_id, "failed": gave_up}


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY, calls_outside=True)
@argument_rules(email_ids=partial(parse_id_list, max_length=EMAIL_BATCH_SIZE))
def deliver_emails(email_ids):
    """Send a batch of outbox emails (at most EMAIL_BATCH_SIZE), each marked sent as it goes.

    What the mail transport refuses is handed to ``deliver_email`` one by one (with its retries
    and backoff); what can never be rendered is marked failed. A redelivered batch sends nothing twice.
    """
    email_ids = parse_id_list("email_ids", email_ids, max_length=EMAIL_BATCH_SIZE)
    batch = _deliver(email_ids)
    for email_id in batch.retry_ids:  # nothing to commit here: each mark was committed as it went
        deliver_email.send(email_id)
    for email_id, reason in batch.failed:
        log.warning("email %s cannot be delivered: %s", email_id, reason)
    return {status: batch.count(status) for status in
            ("sent", "already_sent", "skipped", "missing", "in_flight", "failed", "retry")}


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY)
@argument_rules(limit=parse_optional_id)
def relay_outbox(limit=None, older_than_seconds=None):
    """Re-enqueue every outbox email whose delivery message was lost (docs/jobs.md#relay_outbox).

    Drains the whole outbox in pages (``limit`` caps the rows, ``null`` = all): queued rows
    written (or last relayed) ``older_than_seconds`` ago (default 60), and rows a dead worker
    left ``sending``.
    """
    limit = None if limit is None else parse_id("limit", limit)
    age = RELAY_AFTER if older_than_seconds is None else timedelta(
        seconds=parse_id("older_than_seconds", older_than_seconds) if older_than_seconds else 0)
    rt = runtime()
    relayed, after = 0, 0
    while limit is None or relayed < limit:
        page = RELAY_PAGE if limit is None else min(RELAY_PAGE, limit - relayed)
        with UnitOfWork(rt.engine) as work:
            ids = pending_email_ids(work.session, now=rt.clock.now(), older_than=age,
                                    claim_timeout=rt.email_claim_timeout, after_id=after, limit=page)
            work.send_after_commit(*delivery_messages(ids))
            work.commit()
        relayed += len(ids)
        if len(ids) < page:
            break
        after = ids[-1]
    return {"relayed": relayed}


def relay_clients_outbox(first_client_id: int, last_client_id: int) -> int:
    """Re-enqueue the undelivered emails of a range of clients, however new (each at most once
    per RELAY_AFTER): the follow-ups of a batch delivered again after its work was done."""
    rt = runtime()
    total, after = 0, 0
    while True:
        with UnitOfWork(rt.engine) as work:
            ids = pending_email_ids(work.session, now=rt.clock.now(), older_than=RELAY_AFTER,
                                    claim_timeout=rt.email_claim_timeout,
                                    client_ids=(first_client_id, last_client_id), after_id=after, limit=RELAY_PAGE)
            work.send_after_commit(*delivery_messages(ids))
            work.commit()
        total += len(ids)
        if len(ids) < RELAY_PAGE:
            return total
        after = ids[-1]


def delivery_messages(email_ids: Sequence[int]) -> list[Message]:
    """The messages that deliver outbox rows: one ``deliver_email`` for a lone email, else
    ``deliver_emails`` messages of up to EMAIL_BATCH_SIZE. For ``UnitOfWork.send_after_commit``."""
    ids = list(email_ids)
    if len(ids) == 1:
        return [deliver_email.message(ids[0])]
    return [deliver_emails.message(ids[start:start + EMAIL_BATCH_SIZE])
            for start in range(0, len(ids), EMAIL_BATCH_SIZE)]


def enqueue_delivery(email_ids: Sequence[int]) -> None:
    """Enqueue the delivery of outbox rows whose transaction has committed (an operator's resend)."""
    broker = bound_broker()
    for message in delivery_messages(email_ids):
        broker.enqueue(message)
