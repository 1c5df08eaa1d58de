"""The client aggregate: clients, their users, contacts, pay methods; currencies and groups."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from .base import LONG_TEXT, RATE, Base, money_column


class ClientStatus(StrEnum):
    ACTIVE = "Active"
    INACTIVE = "Inactive"
    CLOSED = "Closed"


class Currency(Base):
    __tablename__ = "currencies"

    id: Mapped[int] = mapped_column(primary_key=True)
    code: Mapped[str] = mapped_column(String(3), unique=True)
    prefix: Mapped[str] = mapped_column(String(10), default="", server_default="")
    suffix: Mapped[str] = mapped_column(String(10), default="", server_default="")
    #: Decimal places of the smallest coin (USD 2, JPY 0, KWD 3): money is rounded to it.
    minor_units: Mapped[int] = mapped_column(Integer, default=2, server_default="2")
    rate: Mapped[Decimal] = mapped_column(RATE, default=Decimal(1), server_default="1")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class ClientGroup(Base):
    __tablename__ = "client_groups"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    colour: Mapped[str] = mapped_column(String(20), default="", server_default="")
    separate_invoices: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class Client(Base):
    __tablename__ = "clients"
    __table_args__ = (
        # The final guard of SPEC §8: a credit balance never goes below zero.
        CheckConstraint("credit_balance >= 0", name="credit_balance_not_negative"),
        Index("ix_clients_email", "email"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    first_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    last_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    company_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    email: Mapped[str] = mapped_column(String(255))
    address1: Mapped[str] = mapped_column(String(200), default="", server_default="")
    address2: Mapped[str] = mapped_column(String(200), default="", server_default="")
    city: Mapped[str] = mapped_column(String(100), default="", server_default="")
    state: Mapped[str] = mapped_column(String(100), default="", server_default="")
    postcode: Mapped[str] = mapped_column(String(20), default="", server_default="")
    #: ISO 3166-1 alpha-2 country code; decides tax rules and the phone number's default region.
    country: Mapped[str] = mapped_column(String(2), default="", server_default="")
    #: Stored as ``+<country code>.<national number>`` when phone formatting is on (SPEC §11).
    phone_number: Mapped[str] = mapped_column(String(50), default="", server_default="")
    tax_id: Mapped[str] = mapped_column(String(50), default="", server_default="")
    currency_id: Mapped[int | None] = mapped_column(ForeignKey("currencies.id"))
    status: Mapped[str] = mapped_column(String(20), default=ClientStatus.ACTIVE, server_default="Active")
    group_id: Mapped[int | None] = mapped_column(ForeignKey("client_groups.id", ondelete="SET NULL"))
    language: Mapped[str] = mapped_column(String(20), default="", server_default="")
    credit_balance: Mapped[Decimal] = money_column()
    signup_date: Mapped[date | None] = mapped_column(Date)
    last_login_at: Mapped[datetime | None]
    last_login_ip: Mapped[str] = mapped_column(String(45), default="", server_default="")
    last_login_host: Mapped[str] = mapped_column(String(255), default="", server_default="")
    #: Admin notes (free text on the profile); dated notes live in ``client_notes``.
    notes: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    # The billing flags an admin toggles (SPEC §1).
    tax_exempt: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    auto_cc_processing: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    send_overdue_reminders: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    apply_late_fees: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    separate_invoices: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
    updated_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
    #: Consecutive daily-run failures; reset by a success. At the threshold the client is parked.
    failure_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    #: A parked client is skipped by the daily run until an operator unparks it.
    parked_at: Mapped[datetime | None]
    parked_reason: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    #: When ``anonymise_client`` replaced the client's personal data (SPEC §12); NULL if never.
    #: Written in the anonymising transaction, with its record in ``job_receipts``.
    anonymised_at: Mapped[datetime | None]


class User(Base):
    """A login; may belong to several clients (``client_users``)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(255), unique=True)
    first_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    last_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    password_hash: Mapped[str] = mapped_column(String(255), default="", server_default="")
    security_question: Mapped[str] = mapped_column(String(255), default="", server_default="")
    security_answer_hash: Mapped[str] = mapped_column(String(255), default="", server_default="")
    last_login_at: Mapped[datetime | None]
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))


class ClientUser(Base):
    __tablename__ = "client_users"

    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    is_owner: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    permissions: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")


class Contact(Base):
    """An extra person of a client (sub-account), with their own email preferences."""

    __tablename__ = "contacts"

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    first_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    last_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    company_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    email: Mapped[str] = mapped_column(String(255))
    phone_number: Mapped[str] = mapped_column(String(50), default="", server_default="")
    country: Mapped[str] = mapped_column(String(2), default="", server_default="")
    general_emails: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    invoice_emails: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    support_emails: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    product_emails: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    domain_emails: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))


class PayMethod(Base):
    """A stored card or bank account. Card numbers live only encrypted or at the gateway."""

    __tablename__ = "pay_methods"
    __table_args__ = (
        # One default pay method per client.
        Index("uq_pay_methods_default", "client_id", unique=True,
              postgresql_where=text("is_default"), sqlite_where=text("is_default")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    client_id: Mapped[int] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"), index=True)
    #: CreditCard, RemoteCreditCard, BankAccount, RemoteBankAccount.
    type: Mapped[str] = mapped_column(String(30))
    description: Mapped[str] = mapped_column(String(255), default="", server_default="")
    gateway_name: Mapped[str] = mapped_column(String(50), default="", server_default="")
    card_type: Mapped[str] = mapped_column(String(30), default="", server_default="")
    card_last_four: Mapped[str] = mapped_column(String(4), default="", server_default="")
    card_expiry: Mapped[str] = mapped_column(String(7), default="", server_default="")
    #: Local card or bank data, encrypted by the application that stored it; never exported.
    encrypted_data: Mapped[bytes | None] = mapped_column(LargeBinary)
    #: A gateway's token for a remote card; never exported.
    gateway_token: Mapped[str] = mapped_column(String(255), default="", server_default="")
    bank_name: Mapped[str] = mapped_column(String(100), default="", server_default="")
    bank_account_type: Mapped[str] = mapped_column(String(30), default="", server_default="")
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    created_at: Mapped[datetime | None] = mapped_column(server_default=text("CURRENT_TIMESTAMP"))
    #: Why the last ``remove_pay_method`` kept this method: the gateway's refusal or error, or
    #: "gateway not active"; '' when no removal failed. Read by the admin panel and operators.
    removal_error: Mapped[str] = mapped_column(LONG_TEXT, default="", server_default="")
    #: When that removal was last tried (with ``removal_error``); NULL if never.
    removal_attempted_at: Mapped[datetime | None]
