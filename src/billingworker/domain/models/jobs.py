"""What the worker records about its own jobs: receipts (idempotency) and failures."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Integer, String, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, Base


class JobReceipt(Base):
    """Proof that a job which creates something new (an add-funds invoice, a draft) already ran.

    Inserted in the same transaction as the work, keyed by the message id (or the caller's
    ``request_id``): a redelivered message hits the primary key and is answered "already done".
    """

    __tablename__ = "job_receipts"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    actor: Mapped[str] = mapped_column(String(100))
    result: Mapped[str] = mapped_column(LONG_TEXT, default="{}", server_default="{}")
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))


class JobFailure(Base):
    """A client a job could not process, for an operator to read (``billingworker failures``)."""

    __tablename__ = "job_failures"
    __table_args__ = (Index("ix_job_failures_client", "client_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    actor: Mapped[str] = mapped_column(String(100))
    message_id: Mapped[str] = mapped_column(String(100), default="", server_default="")
    #: No foreign key: the failure outlives a deleted client.
    client_id: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str] = mapped_column(String(100))
    field: Mapped[str] = mapped_column(String(100), default="", server_default="")
    reason: Mapped[str] = mapped_column(LONG_TEXT)
    created_at: Mapped[datetime]
    #: The daily run it happened in, if any.
    run_id: Mapped[int | None] = mapped_column(Integer, index=True)
