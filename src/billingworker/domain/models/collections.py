"""Collections (SPEC §5, §6, §8): reminders sent, late fees and interest added, card captures attempted.

Each table is the database's "once" guard for its job: a primary key or unique index makes the
second reminder, fee or charge for the same invoice fail, however many workers try.
"""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import Date, ForeignKey, Index, Integer, String, UniqueConstraint, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, RATE, Base, money_column


class ReminderStage(StrEnum):
    """Reminder stages in the order they fall due; the value is the email template's name."""

    UNPAID = "invoice_payment_reminder"
    FIRST_OVERDUE = "first_invoice_overdue_notice"
    SECOND_OVERDUE = "second_invoice_overdue_notice"
    THIRD_OVERDUE = "third_invoice_overdue_notice"


#: Template names of the reminder emails (the stages' values).
REMINDER_TEMPLATES = frozenset(stage.value for stage in ReminderStage)


class InvoiceReminder(Base):
    """One row per (invoice, stage), ever: ``sent``, or ``skipped`` when a later stage was
    already due (a missed day is caught up with the latest stage only)."""

    __tablename__ = "invoice_reminders"

    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True)
    stage: Mapped[str] = mapped_column(String(40), primary_key=True)
    #: sent | skipped
    status: Mapped[str] = mapped_column(String(10))
    sent_on: Mapped[date] = mapped_column(Date)
    outbox_id: Mapped[int | None] = mapped_column(Integer)


class InvoiceLateFee(Base):
    """The late fee of an invoice: at most one per invoice, ever (primary key)."""

    __tablename__ = "invoice_late_fees"

    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True)
    invoice_item_id: Mapped[int | None] = mapped_column(Integer)
    amount: Mapped[Decimal] = money_column()
    applied_on: Mapped[date] = mapped_column(Date)


class InvoiceInterestCharge(Base):
    """One interest line of an invoice (late fee type ``interest``, SPEC §6): at most one per
    (invoice, period), ever (primary key). ``period_start`` is the first day of the calendar
    month the line charges; ``first_day`` .. ``period_end`` are the days of it that were past
    due, charged at ``rate`` percent a year on ``balance`` (actual/365)."""

    __tablename__ = "invoice_interest_charges"

    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), primary_key=True)
    period_start: Mapped[date] = mapped_column(Date, primary_key=True)
    first_day: Mapped[date] = mapped_column(Date)
    period_end: Mapped[date] = mapped_column(Date)
    days: Mapped[int] = mapped_column(Integer)
    #: The balance the interest was charged on (the invoice's balance before interest, at first_day).
    balance: Mapped[Decimal] = money_column()
    #: The annual rate in percent that was charged.
    rate: Mapped[Decimal] = mapped_column(RATE)
    amount: Mapped[Decimal] = money_column()
    invoice_item_id: Mapped[int | None] = mapped_column(Integer)
    applied_on: Mapped[date] = mapped_column(Date)


class CaptureStatus(StrEnum):
    PENDING = "pending"  # recorded, gateway not (yet) answered: never charged again blindly
    SUCCEEDED = "succeeded"
    DECLINED = "declined"  # the card said no: retried on the schedule
    ERROR = "error"  # the gateway failed (network, 5xx): retried on the schedule


class PaymentCapture(Base):
    """One attempt to charge an invoice's balance to the client's stored card.

    Recorded as ``pending`` (and committed) before the gateway is called; its id is the
    idempotency key sent to the gateway. At most one attempt per invoice per day, at most one
    pending and at most one succeeded per invoice (unique indexes).
    """

    __tablename__ = "payment_captures"
    __table_args__ = (
        UniqueConstraint("invoice_id", "attempt_on", name="uq_payment_captures_invoice_day"),
        Index("uq_payment_captures_succeeded", "invoice_id", unique=True,
              postgresql_where=text("status = 'succeeded'"), sqlite_where=text("status = 'succeeded'")),
        Index("uq_payment_captures_pending", "invoice_id", unique=True,
              postgresql_where=text("status = 'pending'"), sqlite_where=text("status = 'pending'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    invoice_id: Mapped[int] = mapped_column(ForeignKey("invoices.id", ondelete="CASCADE"), index=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    pay_method_id: Mapped[int | None] = mapped_column(ForeignKey("pay_methods.id", ondelete="SET NULL"))
    attempt_on: Mapped[date] = mapped_column(Date)
    gateway: Mapped[str] = mapped_column(String(50))
    amount: Mapped[Decimal] = money_column()
    status: Mapped[str] = mapped_column(String(12), default=CaptureStatus.PENDING, server_default="pending")
    #: The gateway's transaction id once it answered.
    gateway_reference: Mapped[str] = mapped_column(String(255), default="", server_default="")
    error: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
    updated_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
