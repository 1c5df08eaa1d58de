"""Email outbox and email log."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, Base


class OutboxStatus(StrEnum):
    QUEUED = "queued"
    #: Claimed by a worker at ``claimed_at``, which is handing it to the mail transport now. The
    #: claim is committed before the transport is called and the ``sent`` mark right after, so a
    #: crash can only repeat the emails in flight at that instant; a claim older than the claim
    #: timeout was left by a dead worker and is delivered again.
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    #: Not sent on purpose: a reminder whose invoice was paid or cancelled before delivery.
    SKIPPED = "skipped"


class OutboxEmail(Base):
    """An email decided inside a billing transaction, sent after it commits (SPEC §14).

    The row is written in the same transaction as the invoice it speaks of, so a rollback
    takes the email with it and a commit can never lose it. ``deliver_email`` sends it and
    marks it sent; ``relay_outbox`` re-enqueues what a crash left behind.
    """

    __tablename__ = "email_outbox"
    __table_args__ = (Index("ix_email_outbox_status", "status", "created_at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    template: Mapped[str] = mapped_column(String(100))
    #: JSON object of ids the template is rendered with (e.g. {"invoice_id": 12}).
    context: Mapped[str] = mapped_column(LONG_TEXT, default="{}", server_default="{}")
    #: One email per event: e.g. "invoice_created:12". A second insert of the same key fails.
    dedupe_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    status: Mapped[str] = mapped_column(String(10), default=OutboxStatus.QUEUED, server_default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    last_error: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
    sent_at: Mapped[datetime | None]
    #: When a worker claimed the row for sending (status ``sending``); kept after it was sent.
    claimed_at: Mapped[datetime | None]
    #: When the relay last re-offered the row (it re-offers a row at most once per relay age).
    relayed_at: Mapped[datetime | None]


class EmailLog(Base):
    """Every email sent to a client, as sent."""

    __tablename__ = "email_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    outbox_id: Mapped[int | None] = mapped_column(ForeignKey("email_outbox.id", ondelete="SET NULL"),
                                                  unique=True)
    template: Mapped[str] = mapped_column(String(100), default="", server_default="")
    subject: Mapped[str] = mapped_column(String(500))
    body_text: Mapped[str] = mapped_column(LONG_TEXT)
    body_html: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    to_address: Mapped[str] = mapped_column(LONG_TEXT)
    cc: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    sent_at: Mapped[datetime]
