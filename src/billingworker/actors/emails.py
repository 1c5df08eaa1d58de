"""Email delivery jobs (docs/jobs.md): deliver one outbox email; relay what a crash left."""

from __future__ import annotations

import logging
from datetime import timedelta

from ..broker import EMAIL_QUEUE
from ..db import unit_of_work
from ..domain.delivery import deliver_email as deliver
from ..domain.delivery import pending_email_ids, record_delivery_failure
from ..domain.errors import ValidationError
from ..runtime import runtime
from .arguments import parse_id
from .base import MAX_RETRIES, job

log = logging.getLogger(__name__)

#: An outbox row still queued this long after it was written lost its delivery message.
RELAY_AFTER = timedelta(minutes=5)


@job(queue_name=EMAIL_QUEUE)
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


@job(queue_name=EMAIL_QUEUE)
def relay_outbox(limit=1000, older_than_seconds=None):
    """Re-enqueue outbox emails still queued ``older_than_seconds`` (default 300) after they were written."""
    limit = parse_id("limit", limit)
    age = RELAY_AFTER if older_than_seconds is None else timedelta(
        seconds=parse_id("older_than_seconds", older_than_seconds) if older_than_seconds else 0)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        ids = pending_email_ids(session, created_before=rt.clock.now() - age, limit=limit)
    for email_id in ids:
        deliver_email.send(email_id)
    return {"relayed": len(ids)}
