"""Email delivery jobs (docs/jobs.md): deliver one outbox email or a batch (one path: a single
email is a batch of one), and relay what a crash or a lost message left in the outbox."""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import partial

from ..db import session_factory, unit_of_work
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
from .base import EMAIL_PRIORITY, job, last_attempt

log = logging.getLogger(__name__)

#: An outbox row still queued this long after it was written (or last relayed) lost its delivery
#: message: short, so that a broker restart costs a minute, not an hour. A row whose message is
#: merely slow is offered twice at worst, and sent once (the claim).
RELAY_AFTER = timedelta(seconds=60)
#: Rows the relay reads per transaction while it drains the outbox.
RELAY_PAGE = 1000


class EmailNotAccepted(Exception):  # noqa: N818 - reads as the outcome it reports
    """The mail transport did not take the message this time (transient: retried with backoff)."""


def _deliver(email_ids: list[int]) -> BatchDelivery:
    rt = runtime()
    with session_factory(rt.engine)() as session:
        return delivery.deliver_emails(session, email_ids, rt.mailer, sender=rt.mail_from, now=rt.clock.now(),
                       claim_timeout=rt.email_claim_timeout)


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY)
@argument_rules(email_id=parse_id)
def deliver_email(email_id):
    """Send one outbox email (a batch of one); a sent email is never resent."""
    email_id = parse_id("email_id", email_id)
    rt = runtime()
    try:
        result = _deliver([email_id]).results[0]
    except Exception as exc:
        # Not the transport (the database...): count the attempt, let Dramatiq retry.
        with unit_of_work(rt.engine) as session:
            record_delivery_failure(session, email_id, f"{type(exc).__name__}: {exc}",
                                    give_up=last_attempt(deliver_email))
            session.commit()
        raise
    if result.status == "failed":
        raise ValidationError("email_id", email_id, f"cannot be delivered: {result.error}")
    if result.status == "retry":
        if last_attempt(deliver_email):
            with unit_of_work(rt.engine) as session:
                delivery.mark_failed(session, email_id)  # the last retry: mark it failed, the relay stops offering it
                session.commit()
        raise EmailNotAccepted(result.error)
    return {"email_id": email_id, "status": result.status}


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY)
@argument_rules(email_ids=partial(parse_id_list, max_length=EMAIL_BATCH_SIZE))
def deliver_emails(email_ids):
    """Send a batch of outbox emails (at most EMAIL_BATCH_SIZE), each marked sent as it goes.

    What the mail transport refuses is handed to ``deliver_email`` one by one (with its retries
    and backoff); what can never be rendered is marked failed. A redelivered batch sends nothing twice.
    """
    email_ids = parse_id_list("email_ids", email_ids, max_length=EMAIL_BATCH_SIZE)
    batch = _deliver(email_ids)
    for email_id in batch.retry_ids:
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
        with unit_of_work(rt.engine) as session:
            ids = pending_email_ids(session, now=rt.clock.now(), older_than=age,
                                    claim_timeout=rt.email_claim_timeout, after_id=after, limit=page)
            session.commit()
        send_in_batches(ids)
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
        with unit_of_work(rt.engine) as session:
            ids = pending_email_ids(session, now=rt.clock.now(), older_than=RELAY_AFTER,
                                    claim_timeout=rt.email_claim_timeout,
                                    client_ids=(first_client_id, last_client_id), after_id=after, limit=RELAY_PAGE)
            session.commit()
        send_in_batches(ids)
        total += len(ids)
        if len(ids) < RELAY_PAGE:
            return total
        after = ids[-1]


def send_in_batches(email_ids: list[int]) -> None:
    """Enqueue the delivery of outbox rows: one ``deliver_email`` for a lone email, else
    ``deliver_emails`` messages of up to EMAIL_BATCH_SIZE. Call only after the commit."""
    if not email_ids:
        return
    if len(email_ids) == 1:
        deliver_email.send(email_ids[0])
        return
    for start in range(0, len(email_ids), EMAIL_BATCH_SIZE):
        deliver_emails.send(list(email_ids[start:start + EMAIL_BATCH_SIZE]))


def send_emails(email_ids: list[int]) -> None:
    """Enqueue delivery of outbox emails: only ever called after the transaction committed."""
    if email_ids:
        send_in_batches(list(email_ids))
