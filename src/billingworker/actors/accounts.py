"""Client-account jobs (docs/jobs.md): see the module's actors."""

from __future__ import annotations

from ..db import unit_of_work
from ..domain.accounts.password_reset import request_password_reset
from ..runtime import runtime
from .arguments import argument_rules, parse_bool, parse_optional_id, parse_text
from .base import job, receipt_key
from .emails import send_emails


@job()
@argument_rules(user_id=parse_optional_id, security_checked=parse_bool)
def send_password_reset_email(user_id=None, email=None, requested_by="client", security_checked=False,
                              request_id=None):
    """Email a single-use password-reset link to a user (SPEC §10), once per message or ``request_id``.

    An unknown ``email`` completes silently (outcome ``unknown_email``); more than
    ``MAX_RESETS_PER_HOUR`` requests for one user complete without an email (``rate_limited``).
    The result never holds the token.
    """
    user_id = parse_optional_id("user_id", user_id)
    email = None if email is None else parse_text("email", email, max_length=255)
    security_checked = parse_bool("security_checked", security_checked)
    key = receipt_key("send_password_reset_email", request_id)
    rt = runtime()
    with unit_of_work(rt.engine) as session:
        done = request_password_reset(session, user_id=user_id, email=email, requested_by=requested_by,
                                      security_checked=security_checked, request_key=key, now=rt.clock.now())
        session.commit()
    send_emails(list(done.email_ids))
    return {"outcome": done.outcome, "user_id": done.user_id, "token_id": done.token_id,
            "expires_at": done.expires_at.isoformat() if done.expires_at else None}
