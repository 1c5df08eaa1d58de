"""Billable things: services (products), addons, domains, billable items; and what bills them
(tax rules, installation settings, cancellation requests)."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import Boolean, Date, ForeignKey, Index, Integer, SmallInteger, String, text
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, RATE, Base, money_column


class ThingStatus(StrEnum):
    PENDING = "Pending"
    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    TERMINATED = "Terminated"
    CANCELLED = "Cancelled"
    FRAUD = "Fraud"


class DomainStatus(StrEnum):
    PENDING = "Pending"
    PENDING_TRANSFER = "Pending Transfer"
    ACTIVE = "Active"
    GRACE = "Grace"
    REDEMPTION = "Redemption"
    EXPIRED = "Expired"
    TRANSFERRED_AWAY = "Transferred Away"
    CANCELLED = "Cancelled"
    FRAUD = "Fraud"


class InvoiceAction(StrEnum):
    """What the generator does with a billable item (WHMCS's "Invoice Action")."""

    DONT_INVOICE = "dont_invoice"
    NEXT_RUN = "next_run"  # invoice on the next run, whatever its due date
    NEXT_INVOICE = "next_invoice"  # ride on the client's next invoice
    DUE_DATE = "due_date"  # invoice as normal for its due date
    RECUR = "recur"  # every recur_every recur_cycle, recur_for times


class Setting(Base):
    """Installation-wide settings (SPEC §2), shared with the admin panel. Values are JSON."""

    __tablename__ = "settings"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(LONG_TEXT)


class TaxRule(Base):
    """A tax rate for a country and state ('' matches any). Level 2 may be compound."""

    __tablename__ = "tax_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    level: Mapped[int] = mapped_column(SmallInteger)
    name: Mapped[str] = mapped_column(String(100))
    country: Mapped[str] = mapped_column(String(2), default="", server_default="")
    state: Mapped[str] = mapped_column(String(100), default="", server_default="")
    #: Percent, e.g. 20.000000 for 20 %.
    rate: Mapped[Decimal] = mapped_column(RATE)


class Product(Base):
    __tablename__ = "products"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    group_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    #: The server module that provisions it (cpanel, plesk...), '' for none.
    module: Mapped[str] = mapped_column(String(50), default="", server_default="")


class _Recurring:
    """Columns every recurring thing has (SPEC §1)."""

    amount: Mapped[Decimal] = money_column()
    billing_cycle: Mapped[str] = mapped_column(String(20), default="Monthly", server_default="Monthly")
    #: The payment gateway's system name (e.g. "stripe", "banktransfer").
    payment_method: Mapped[str] = mapped_column(String(50), default="", server_default="")
    registration_date: Mapped[date | None] = mapped_column(Date)
    next_due_date: Mapped[date | None] = mapped_column(Date)
    next_invoice_date: Mapped[date | None] = mapped_column(Date)
    #: Anchor day of month (1-31) so that 31 Jan -> 28 Feb -> 31 Mar; NULL = the due date's day.
    due_day: Mapped[int | None] = mapped_column(SmallInteger)
    override_auto_suspend: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    taxed: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    notes: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")


class Service(_Recurring, Base):
    __tablename__ = "services"
    __table_args__ = (Index("ix_services_client_due", "client_id", "next_due_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    product_id: Mapped[int | None] = mapped_column(ForeignKey("products.id", ondelete="SET NULL"))
    #: Display name on invoices when there is no product row.
    name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    domain: Mapped[str] = mapped_column(String(255), default="", server_default="")
    username: Mapped[str] = mapped_column(String(100), default="", server_default="")
    status: Mapped[str] = mapped_column(String(20), default=ThingStatus.PENDING, server_default="Pending")
    first_payment_amount: Mapped[Decimal] = money_column()
    termination_date: Mapped[date | None] = mapped_column(Date)
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))


class Addon(_Recurring, Base):
    __tablename__ = "addons"
    __table_args__ = (Index("ix_addons_client_due", "client_id", "next_due_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(20), default=ThingStatus.PENDING, server_default="Pending")
    setup_fee: Mapped[Decimal] = money_column()
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))


class Domain(_Recurring, Base):
    __tablename__ = "domains"
    __table_args__ = (Index("ix_domains_client_due", "client_id", "next_due_date"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    domain: Mapped[str] = mapped_column(String(255))
    #: Register or Transfer.
    type: Mapped[str] = mapped_column(String(20), default="Register", server_default="Register")
    registrar: Mapped[str] = mapped_column(String(50), default="", server_default="")
    registration_period: Mapped[int] = mapped_column(SmallInteger, default=1, server_default="1")
    expiry_date: Mapped[date | None] = mapped_column(Date)
    status: Mapped[str] = mapped_column(String(20), default=DomainStatus.PENDING, server_default="Pending")
    first_payment_amount: Mapped[Decimal] = money_column()
    do_not_renew: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))


class BillableItem(Base):
    """A one-off or recurring charge an admin adds by hand."""

    __tablename__ = "billable_items"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    description: Mapped[str] = mapped_column(String(500))
    amount: Mapped[Decimal] = money_column()
    invoice_action: Mapped[str] = mapped_column(String(20), default=InvoiceAction.DONT_INVOICE,
                                                server_default="dont_invoice")
    due_date: Mapped[date] = mapped_column(Date)
    #: For invoice_action = recur: every ``recur_every`` ``recur_cycle`` (Days, Weeks, Months, Years)
    #: for ``recur_for`` invoices in all (0 = no end).
    recur_every: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    recur_cycle: Mapped[str] = mapped_column(String(10), default="", server_default="")
    recur_for: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: How many invoices have billed it so far.
    invoice_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    payment_method: Mapped[str] = mapped_column(String(50), default="", server_default="")
    taxed: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))


class CancelRequest(Base):
    """A client's request to cancel a service; while it exists the service is not invoiced."""

    __tablename__ = "cancel_requests"

    id: Mapped[int] = mapped_column(primary_key=True)
    service_id: Mapped[int] = mapped_column(ForeignKey("services.id", ondelete="CASCADE"), index=True)
    #: Immediate or End of Billing Period.
    type: Mapped[str] = mapped_column(String(30))
    reason: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
