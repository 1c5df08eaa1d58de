"""Which renderer an outbox row takes: a password-reset link and an admin's written message
have their own modules; every other template is rendered from the ids in the row's context.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ..accounts.password_reset import render_password_reset_email
from ..models import OutboxEmail
from .client_email import render_client_message
from .emails import CLIENT_MESSAGE_TEMPLATE, PASSWORD_RESET_TEMPLATE, RenderCache, RenderedEmail, render_from_ids


def render_outbox_email(session: Session, outbox: OutboxEmail, cache: RenderCache | None = None) -> RenderedEmail:
    """Render an outbox row as it is delivered, from the rows as they are now. Reads only.
    Raises ``ValidationError`` (unknown template, bad context) or ``NotFound`` (a row is gone).
    """
    settings = cache.settings if cache is not None else None
    if outbox.template == PASSWORD_RESET_TEMPLATE:
        return render_password_reset_email(session, outbox, settings)
    if outbox.template == CLIENT_MESSAGE_TEMPLATE:
        return render_client_message(session, outbox, settings)
    return render_from_ids(session, outbox, cache)
