"""The shared database's tables (SPEC §1). ``docs/schema.md`` explains them to other apps."""

from .accounts import ClientExport, ClientMerge, EmailTemplate, ModuleCommand, ModuleCommandStatus, PasswordResetToken
from .base import MONEY, Base
from .catalog import (
    Addon,
    BillableItem,
    CancelRequest,
    Domain,
    DomainStatus,
    InvoiceAction,
    Product,
    Service,
    Setting,
    TaxRule,
    ThingStatus,
)
from .clients import Client, ClientGroup, ClientStatus, ClientUser, Contact, Currency, PayMethod, User
from .collections import CaptureStatus, InvoiceLateFee, InvoiceReminder, PaymentCapture, ReminderStage
from .invoices import (
    THING_TYPES,
    BilledPeriod,
    CreditHistory,
    Invoice,
    InvoiceItem,
    InvoiceKind,
    InvoiceSequence,
    InvoiceStatus,
    ItemType,
    Transaction,
)
from .jobs import JobFailure, JobReceipt
from .messaging import EmailLog, OutboxEmail, OutboxStatus
from .records import Affiliate, ClientFile, ClientNote, Order, Quote, Ticket
from .runs import DailyRun, DailyRunBatch, DailyRunTask

__all__ = [
    "MONEY", "Base", "Addon", "BillableItem", "CancelRequest", "Domain", "DomainStatus", "InvoiceAction",
    "Product", "Service", "Setting", "TaxRule", "ThingStatus", "ClientStatus", "Client", "ClientGroup",
    "ClientUser", "Contact", "Currency", "PayMethod", "User", "THING_TYPES", "BilledPeriod",
    "CreditHistory", "Invoice", "InvoiceItem", "InvoiceKind", "InvoiceSequence", "InvoiceStatus",
    "ItemType", "Transaction", "JobFailure", "JobReceipt", "EmailLog", "OutboxEmail", "OutboxStatus",
    "Affiliate", "ClientFile", "ClientNote", "Order", "Quote", "Ticket", "CaptureStatus", "InvoiceLateFee",
    "InvoiceReminder", "PaymentCapture", "ReminderStage", "DailyRun", "DailyRunBatch", "DailyRunTask",
    "ClientExport", "ClientMerge", "EmailTemplate", "ModuleCommand", "ModuleCommandStatus", "PasswordResetToken",
]

# The web console's audit trail (console/audit.py) and its signed-in sessions (console/sessions.py).
from .audit import ConsoleAudit, ConsoleSession  # noqa: E402

__all__ += ["ConsoleAudit", "ConsoleSession"]
