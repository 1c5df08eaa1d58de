"""Email delivery jobs (docs/jobs.md): deliver one outbox email, or a batch; relay what a crash left."""

from __future__ import annotations

import logging
from datetime import timedelta

from ..broker import EMAIL_QUEUE
from ..db import unit_of_work
from ..domain.delivery import deliver_email as deliver
from ..domain.delivery import pending_email_ids, record_delivery_failure
from ..domain.delivery_batch import EMAIL_BATCH_SIZE
from ..domain.delivery_batch import deliver_emails as deliver_batch
from ..domain.errors import ValidationError
from ..runtime import runtime
from .arguments import parse_id, parse_id_list
from .base import EMAIL_PRIORITY, MAX_RETRIES, job

log = logging.getLogger(__name__)

#: An outbox row still queued this long after it was written lost its delivery message.
RELAY_AFTER = timedelta(minutes=5)


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY)
def deliver_email(email_id):
    """Send one outbox email through the mail transport and log it; a sent email is never resent."""
    email_id = parse_id("email_id", email_id)
    rt = runtime()
    try:
        with unit_of_work(rt.engine) as session:
            result = deliver(session, email_id, rt.mailer, sender=rt.mail_from, now=rt.clock.now())
            session.commit()
    except Exception as exc:
        # Count the attempt (in its own transaction), then let Dramatiq retry with backoff.
        from dramatiq.middleware import CurrentMessage

        message = CurrentMessage.get_current_message()
        retries = message.options.get("retries", 0) if message is not None else 0
        with unit_of_work(rt.engine) as session:
            # An email that cannot be rendered (its invoice is gone...) will never go: park it
            # as failed so that the relay stops offering it, and let it dead-letter.
            record_delivery_failure(session, email_id, f"{type(exc).__name__}: {exc}",
                                    give_up=retries >= MAX_RETRIES or isinstance(exc, ValidationError))
            session.commit()
        raise
    return {"email_id": email_id, "status": result.status}


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY)
def deliver_emails(email_ids):
    """Send a batch of outbox emails (at most EMAIL_BATCH_SIZE) in one transaction.

    What the mailer refuses is handed to ``deliver_email`` one by one (with its retries and
    backoff); what can never be rendered is parked as failed. A redelivered batch sends nothing twice.
    """
    email_ids = parse_id_list("email_ids", email_ids, max_length=EMAIL_BATCH_SIZE)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        batch = deliver_batch(session, email_ids, rt.mailer, sender=rt.mail_from, now=rt.clock.now())
        session.commit()
    for email_id in batch.retry_ids:
        deliver_email.send(email_id)
    for email_id, reason in batch.failed:
        log.warning("email %s cannot be delivered: %s", email_id, reason)
    return {"sent": batch.count("sent"), "already_sent": batch.count("already_sent"),
            "skipped": batch.count("skipped"), "missing": batch.count("missing"),
            "failed": len(batch.failed), "retry": len(batch.retry_ids)}


@job(queue_name=EMAIL_QUEUE, priority=EMAIL_PRIORITY)
def relay_outbox(limit=1000, older_than_seconds=None):
    """Re-enqueue outbox emails still queued ``older_than_seconds`` (default 300) after they were written."""
    limit = parse_id("limit", limit)
    age = RELAY_AFTER if older_than_seconds is None else timedelta(
        seconds=parse_id("older_than_seconds", older_than_seconds) if older_than_seconds else 0)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        ids = pending_email_ids(session, created_before=rt.clock.now() - age, limit=limit)
    send_in_batches(ids)
    return {"relayed": len(ids)}


def send_in_batches(email_ids: list[int]) -> None:
    """Enqueue the delivery of outbox rows: one ``deliver_email`` for a lone email, else
    ``deliver_emails`` messages of up to EMAIL_BATCH_SIZE. Call only after the commit."""
    if len(email_ids) == 1:
        deliver_email.send(email_ids[0])
        return
    for start in range(0, len(email_ids), EMAIL_BATCH_SIZE):
        deliver_emails.send(list(email_ids[start:start + EMAIL_BATCH_SIZE]))
