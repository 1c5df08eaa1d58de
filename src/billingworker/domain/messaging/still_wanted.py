"""Whether a queued email should still go when its turn comes (checked at delivery, SPEC §5, §10).

An outbox row is written when the billing decides on it; it is delivered a moment (or, with
the mail server down, hours) later. In between the world may have moved: the invoice was paid,
the client closed, a newer password-reset link replaced the old one. Such a row is marked
``skipped`` instead of sent. Every other email always goes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...clock import as_utc
from ...store.arrays import among
from ..models import Client, ClientStatus, Invoice, InvoiceStatus, PasswordResetToken
from ..models.collections import REMINDER_TEMPLATES

#: Emails that announce an invoice: not sent once the invoice was cancelled (or is a draft again).
INVOICE_NOTICE_TEMPLATES = frozenset({"invoice_created"})
#: A reset link that can no longer be used (used, replaced, expired) is not sent.
PASSWORD_RESET_TEMPLATE = "password_reset"


def still_wanted(session: Session, template: str, context: Mapping[str, Any], *, now: datetime) -> bool:
    """Whether one queued email should still be sent. Reads only."""
    return not unwanted_emails(session, [(0, template, context)], now=now)


def unwanted_emails(session: Session, emails: Sequence[tuple[int, str, Mapping[str, Any]]], *,
                    now: datetime) -> set[int]:
    """Of (outbox id, template, context), the ids no longer wanted; two queries at most.

    - a reminder stage: only while its invoice is Unpaid and its client takes reminders (flag on,
      not Closed); an invoice paid, cancelled or deleted between enqueue and send gets none;
    - an invoice notice (``invoice_created``): not for an invoice cancelled, back to Draft or deleted;
    - a password reset: only while its token is open (not used, not replaced, not expired), so
      a link that would fail is never sent (the newer email carries the working one).
    An email without the id it is about is left to the renderer to refuse.
    """
    by_invoice: dict[int, list[tuple[int, str]]] = {}
    by_token: dict[int, list[int]] = {}
    for email_id, template, context in emails:
        if template in REMINDER_TEMPLATES or template in INVOICE_NOTICE_TEMPLATES:
            invoice_id = context.get("invoice_id")
            if _is_id(invoice_id):
                by_invoice.setdefault(invoice_id, []).append((email_id, template))
        elif template == PASSWORD_RESET_TEMPLATE:
            token_id = context.get("token_id")
            if _is_id(token_id):
                by_token.setdefault(token_id, []).append(email_id)
    unwanted: set[int] = set()
    if by_invoice:
        rows = {row.id: row for row in session.execute(
            select(Invoice.id, Invoice.status, Client.send_overdue_reminders, Client.status.label("client_status"))
            .join(Client, Client.id == Invoice.client_id)
            .where(among(session, Invoice.id, sorted(by_invoice))))}
        unwanted |= {email_id for invoice_id, queued in by_invoice.items() for email_id, template in queued
                     if not _invoice_email_wanted(template, rows.get(invoice_id))}
    if by_token:
        open_tokens = {row.id for row in session.execute(
            select(PasswordResetToken.id, PasswordResetToken.expires_at)
            .where(among(session, PasswordResetToken.id, sorted(by_token)),
                   PasswordResetToken.used_at.is_(None), PasswordResetToken.invalidated_at.is_(None)))
            if as_utc(row.expires_at) > as_utc(now)}
        unwanted |= {email_id for token_id, ids in by_token.items() if token_id not in open_tokens for email_id in ids}
    return unwanted


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _invoice_email_wanted(template: str, row: Any) -> bool:
    if row is None:
        return False
    if template in INVOICE_NOTICE_TEMPLATES:
        return row.status not in (InvoiceStatus.CANCELLED, InvoiceStatus.DRAFT)
    return (row.status == InvoiceStatus.UNPAID and bool(row.send_overdue_reminders)
            and row.client_status != ClientStatus.CLOSED)
