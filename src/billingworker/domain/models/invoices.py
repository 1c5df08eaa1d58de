"""Invoices, their items, the billed-period guard, transactions and credit history."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    String,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, RATE, Base, money_column


class InvoiceStatus(StrEnum):
    DRAFT = "Draft"
    UNPAID = "Unpaid"
    PAID = "Paid"
    CANCELLED = "Cancelled"
    REFUNDED = "Refunded"
    COLLECTIONS = "Collections"
    PAYMENT_PENDING = "Payment Pending"


class InvoiceKind(StrEnum):
    STANDARD = "standard"
    #: Its payment credits the client's balance instead of paying for a service (SPEC §4).
    ADD_FUNDS = "add_funds"


class ItemType(StrEnum):
    SERVICE = "service"
    ADDON = "addon"
    DOMAIN = "domain"
    BILLABLE = "billable"
    ADD_FUNDS = "add_funds"
    LATE_FEE = "late_fee"
    PRORATA = "prorata"
    MANUAL = "manual"


#: Item types that bill a recurring thing for a due date (and so take a billed period).
THING_TYPES = (ItemType.SERVICE, ItemType.ADDON, ItemType.DOMAIN, ItemType.BILLABLE)


class Invoice(Base):
    __tablename__ = "invoices"
    __table_args__ = (
        CheckConstraint("balance_due >= 0", name="balance_due_not_negative"),
        Index("ix_invoices_client_status", "client_id", "status"),
        Index("ix_invoices_status_due", "status", "date_due"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Sequential, never reused (``invoice_sequences``); NULL while Draft.
    number: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    currency_id: Mapped[int | None] = mapped_column(ForeignKey("currencies.id"))
    kind: Mapped[str] = mapped_column(String(20), default=InvoiceKind.STANDARD, server_default="standard")
    status: Mapped[str] = mapped_column(String(20), default=InvoiceStatus.UNPAID, server_default="Unpaid")
    date_created: Mapped[date] = mapped_column(Date)
    date_due: Mapped[date] = mapped_column(Date)
    date_paid: Mapped[date | None] = mapped_column(Date)
    payment_method: Mapped[str] = mapped_column(String(50), default="", server_default="")
    subtotal: Mapped[Decimal] = money_column()
    tax1: Mapped[Decimal] = money_column()
    tax2: Mapped[Decimal] = money_column()
    tax_name1: Mapped[str] = mapped_column(String(100), default="", server_default="")
    tax_name2: Mapped[str] = mapped_column(String(100), default="", server_default="")
    tax_rate1: Mapped[Decimal] = mapped_column(RATE, default=Decimal(0), server_default="0")
    tax_rate2: Mapped[Decimal] = mapped_column(RATE, default=Decimal(0), server_default="0")
    #: subtotal + tax1 + tax2 (exclusive prices) or the sum of the lines (inclusive prices).
    total: Mapped[Decimal] = money_column()
    credit_applied: Mapped[Decimal] = money_column()
    amount_paid: Mapped[Decimal] = money_column()
    #: total - credit_applied - amount_paid, never below zero (an overpayment becomes credit).
    balance_due: Mapped[Decimal] = money_column()
    notes: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
    updated_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))


class InvoiceItem(Base):
    __tablename__ = "invoice_items"
    __table_args__ = (Index("ix_invoice_items_thing", "item_type", "item_id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Checked at commit (deferred): a billing run writes the items before their invoice row, so
    #: that the invoice number (a lock held until commit) is taken last.
    invoice_id: Mapped[int] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    #: service, addon, domain, billable, add_funds, late_fee, prorata, manual.
    item_type: Mapped[str] = mapped_column(String(20))
    #: The billed thing's id (for service/addon/domain/billable/prorata).
    item_id: Mapped[int | None] = mapped_column(Integer)
    description: Mapped[str] = mapped_column(LONG_TEXT)
    amount: Mapped[Decimal] = money_column()
    taxed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    #: The due date this line bills for (the start of the period), if it bills a thing.
    due_date: Mapped[date | None] = mapped_column(Date)
    #: The last day of the billed period, for the line's text and for statements.
    period_end: Mapped[date | None] = mapped_column(Date)


class BilledPeriod(Base):
    """The database's guard against billing a thing twice for one due date (SPEC §4), and
    against billing it twice on one billing day.

    One row per (thing, due date) that an invoice bills. The primary key makes a second claim
    fail even if two workers race. A claim whose invoice is Cancelled may be taken over by a
    new invoice; deleting the invoice drops its claims.

    ``billed_on`` is the day (``as_of``) of the due-invoice generation that made the claim, NULL
    for every other path (invoice selected items, mass update). The unique index on
    (thing, ``billed_on``) lets generation claim one period per thing per billing day, however
    often or concurrently the day is run: a period that became due during the day (paid from
    credit at creation, so ``next_due_date`` moved into the window) waits for the next day.
    """

    __tablename__ = "billed_periods"
    __table_args__ = (
        Index("uq_billed_periods_billing_day", "item_type", "item_id", "billed_on", unique=True),
    )

    item_type: Mapped[str] = mapped_column(String(20), primary_key=True)
    item_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    due_date: Mapped[date] = mapped_column(Date, primary_key=True)
    invoice_id: Mapped[int] = mapped_column(
        ForeignKey("invoices.id", ondelete="CASCADE", deferrable=True, initially="DEFERRED"), index=True)
    #: The billing day of the generation run that claimed this period; NULL for other paths
    #: (NULLs never clash in a unique index, on PostgreSQL, SQLite and MySQL alike).
    billed_on: Mapped[date | None] = mapped_column(Date)


class InvoiceSequence(Base):
    """Gap-free invoice numbering: the row is locked by the transaction that takes numbers,
    so a rollback gives them back and two workers never take the same one."""

    __tablename__ = "invoice_sequences"

    name: Mapped[str] = mapped_column(String(50), primary_key=True)
    last_number: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class Transaction(Base):
    """Money in or out. Income records: they outlive the client (client_id becomes NULL)."""

    __tablename__ = "transactions"
    __table_args__ = (UniqueConstraint("gateway", "transaction_id", name="uq_transactions_gateway_txid"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int | None] = mapped_column(ForeignKey("clients.id", ondelete="SET NULL"), index=True)
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id", ondelete="SET NULL"), index=True)
    currency_id: Mapped[int | None] = mapped_column(ForeignKey("currencies.id"))
    date: Mapped[datetime]
    gateway: Mapped[str] = mapped_column(String(50))
    #: The gateway's own id: (gateway, transaction_id) is unique, so a payment reported twice
    #: is recorded once.
    transaction_id: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(String(500), default="", server_default="")
    amount_in: Mapped[Decimal] = money_column()
    fees: Mapped[Decimal] = money_column()
    amount_out: Mapped[Decimal] = money_column()


class CreditHistory(Base):
    """Every change of a client's credit balance (SPEC §1)."""

    __tablename__ = "credit_history"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    date: Mapped[date] = mapped_column(Date)
    description: Mapped[str] = mapped_column(String(500))
    #: Positive adds credit, negative spends it.
    amount: Mapped[Decimal] = money_column()
    balance_after: Mapped[Decimal] = money_column()
    invoice_id: Mapped[int | None] = mapped_column(ForeignKey("invoices.id", ondelete="SET NULL"))
    #: Who did it: "job:<actor>", "admin:<id>", "gateway:<name>" (a payment kept as credit) or
    #: "add_funds" (a paid add-funds invoice; also the guard that credits it once).
    source: Mapped[str] = mapped_column(String(100), default="", server_default="")
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
