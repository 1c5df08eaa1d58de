"""Client-account jobs (docs/jobs.md): see the module's actors."""

from __future__ import annotations

from ..domain.accounts.password_reset import request_password_reset
from ..runtime import runtime
from .arguments import argument_rules, parse_bool, parse_optional_id, parse_text
from .base import job, receipt_key
from .emails import delivery_messages
from .unit_of_work import UnitOfWork


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
    with UnitOfWork(rt.engine) as work:
        done = request_password_reset(work.session, user_id=user_id, email=email, requested_by=requested_by,
                                      security_checked=security_checked, request_key=key, now=rt.clock.now())
        work.send_after_commit(*delivery_messages(done.email_ids))
        work.commit()
    return {"outcome": done.outcome, "user_id": done.user_id, "token_id": done.token_id,
            "expires_at": done.expires_at.isoformat() if done.expires_at else None}
