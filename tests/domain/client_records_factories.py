"""A client with one record of every kind the database keeps for a client (SPEC §1, §12), for
the close, delete, merge and export tests. Secrets are planted with recognisable values
(``SECRETS``) so an export can be scanned for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from billingworker.domain.models import (
    Affiliate,
    BilledPeriod,
    CancelRequest,
    ClientExport,
    ClientFile,
    ClientNote,
    ClientUser,
    Contact,
    CreditHistory,
    EmailLog,
    Invoice,
    InvoiceItem,
    InvoiceLateFee,
    InvoiceReminder,
    JobFailure,
    ModuleCommand,
    Order,
    OutboxEmail,
    PasswordResetToken,
    PaymentCapture,
    Quote,
    Ticket,
    Transaction,
    User,
)
from tests import factories as f

NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)
TODAY = date(2026, 1, 10)


def secrets(tag: str) -> dict[str, str]:
    """The secret values planted for the client tagged ``tag``: none may appear in an export."""
    return {
        "card_number": f"4111111111111111{tag}",
        "gateway_token": f"tok_SECRET_{tag}_cus_9f8e7d",
        "password_hash": f"$argon2id$v=19$m=65536,t=3,p=4$SECRETPW{tag}",
        "security_answer_hash": f"$argon2id$v=19$m=65536,t=3,p=4$SECRETANSWER{tag}",
        "reset_token_hash": (f"{tag}abcdef" * 16)[:64],
    }


@dataclass
class Records:
    """Ids of what ``client_with_every_record`` made."""

    client_id: int
    user_id: int
    shared_user_id: int | None
    unpaid_invoice_id: int
    paid_invoice_id: int
    draft_invoice_id: int
    pending_invoice_id: int
    service_id: int
    terminated_service_id: int
    addon_id: int
    domain_id: int
    billable_id: int
    pay_method_id: int
    transaction_ids: list[int] = field(default_factory=list)
    tag: str = ""


def _add(session: Session, obj):
    session.add(obj)
    session.flush()
    return obj


def _next_number(session: Session) -> int:
    return (session.scalar(select(func.max(Invoice.number))) or 1000) + 1


def _invoice(session: Session, client_id: int, currency_id: int | None, *, status: str, total: str,
             numbered: bool = True, **kw) -> Invoice:
    total_d = Decimal(total)
    kw.setdefault("balance_due", total_d if status in ("Unpaid", "Payment Pending", "Draft") else Decimal(0))
    return _add(session, Invoice(client_id=client_id, currency_id=currency_id, status=status,
                                 number=_next_number(session) if numbered else None, date_created=TODAY,
                                 date_due=date(2026, 1, 15), subtotal=total_d, total=total_d,
                                 payment_method="stripe", **kw))


def client_with_every_record(session: Session, *, tag: str = "a", credit: str = "25.00", currency_id=None,
                             shared_user: User | None = None, with_affiliate: bool = True, **client_kw) -> Records:
    """One client with a record of every kind: users (owner with password and security answer
    hashes, a reset token), a contact, a default card (encrypted data and gateway token), a
    service (+ a Terminated one), an addon, a domain, a recurring billable item, invoices
    (Unpaid with credit applied, a reminder, a late fee, a capture; Paid with its transaction;
    Draft; Payment Pending), a transaction without invoice, credit history, an outbox email and
    its log, a quote, an order, a ticket, a file, an affiliate, a note, a module command, an
    export row and a job failure. ``shared_user`` is also linked (not as owner)."""
    kw = {"email": f"{tag}@client.example", "credit_balance": Decimal(credit), "notes": f"Admin notes of {tag}",
          **client_kw}
    if currency_id is not None:
        kw["currency_id"] = currency_id
    c = f.client(session, **kw)
    cid, cur = c.id, c.currency_id
    s = secrets(tag)
    user = _add(session, User(email=f"owner-{tag}@client.example", first_name="Owner", last_name=tag.upper(),
                              password_hash=s["password_hash"], security_question="First pet?",
                              security_answer_hash=s["security_answer_hash"]))
    _add(session, ClientUser(client_id=cid, user_id=user.id, is_owner=True, permissions="all"))
    if shared_user is not None:
        _add(session, ClientUser(client_id=cid, user_id=shared_user.id, is_owner=False, permissions="invoices"))
    _add(session, PasswordResetToken(user_id=user.id, token_hash=s["reset_token_hash"], requested_by="client",
                                     created_at=NOW, expires_at=NOW))
    _add(session, Contact(client_id=cid, first_name="Bob", email=f"bob-{tag}@client.example", invoice_emails=True))
    card = f.card(session, c, encrypted_data=s["card_number"].encode(), gateway_token=s["gateway_token"],
                  card_expiry="12/2030", description=f"Visa of {tag}")
    service = f.service(session, c, next_due_date=date(2026, 1, 15), domain=f"{tag}.example")
    terminated = f.service(session, c, next_due_date=date(2026, 1, 15), domain=f"old-{tag}.example",
                           status="Terminated")
    _add(session, CancelRequest(service_id=service.id, type="End of Billing Period", reason="moving"))
    addon = f.addon(session, service, next_due_date=date(2026, 1, 15))
    domain = f.domain(session, c, next_due_date=date(2026, 3, 1), domain=f"{tag}-domain.example")
    billable = f.billable(session, c, due_date=date(2026, 1, 20), invoice_action="recur", recur_every=1,
                          recur_cycle="Months", recur_for=0)

    unpaid = _invoice(session, cid, cur, status="Unpaid", total="10.00", credit_applied=Decimal("4.00"),
                      balance_due=Decimal("6.00"))
    _add(session, InvoiceItem(invoice_id=unpaid.id, client_id=cid, item_type="service", item_id=service.id,
                              description="Shared Hosting", amount=Decimal("10.00"), due_date=date(2026, 1, 15)))
    _add(session, BilledPeriod(item_type="service", item_id=service.id, due_date=date(2026, 1, 15),
                               invoice_id=unpaid.id))
    _add(session, InvoiceReminder(invoice_id=unpaid.id, stage="invoice_payment_reminder", status="sent",
                                  sent_on=TODAY))
    _add(session, InvoiceLateFee(invoice_id=unpaid.id, amount=Decimal("0"), applied_on=TODAY))
    _add(session, PaymentCapture(invoice_id=unpaid.id, client_id=cid, pay_method_id=card.id, attempt_on=TODAY,
                                 gateway="testgateway", amount=Decimal("6.00"), status="declined"))
    paid = _invoice(session, cid, cur, status="Paid", total="15.00", amount_paid=Decimal("15.00"),
                    date_paid=TODAY)
    _add(session, InvoiceItem(invoice_id=paid.id, client_id=cid, item_type="domain", item_id=domain.id,
                              description="Domain renewal", amount=Decimal("15.00"), due_date=date(2025, 3, 1)))
    draft = _invoice(session, cid, cur, status="Draft", total="0.00", numbered=False)
    pending = _invoice(session, cid, cur, status="Payment Pending", total="7.00")
    tx_paid = _add(session, Transaction(client_id=cid, invoice_id=paid.id, currency_id=cur, date=NOW,
                                        gateway="stripe", transaction_id=f"ch_{tag}_paid", description="Payment",
                                        amount_in=Decimal("15.00"), fees=Decimal("0.50")))
    tx_free = _add(session, Transaction(client_id=cid, currency_id=cur, date=NOW, gateway="banktransfer",
                                        transaction_id=f"bt_{tag}_credit", description="Funds by transfer",
                                        amount_in=Decimal("25.00")))
    _add(session, CreditHistory(client_id=cid, date=TODAY, description="Funds by transfer", amount=Decimal(credit),
                                balance_after=Decimal(credit), source="admin:1"))
    _add(session, CreditHistory(client_id=cid, date=TODAY, description=f"Credit Applied to Invoice #{unpaid.number}",
                                amount=Decimal("-4.00"), balance_after=Decimal(credit), invoice_id=unpaid.id,
                                source="job:apply_credit"))
    outbox = _add(session, OutboxEmail(client_id=cid, template="invoice_created", context='{"invoice_id": 1}',
                                       dedupe_key=f"invoice_created:{tag}:{unpaid.id}", status="sent"))
    _add(session, EmailLog(client_id=cid, outbox_id=outbox.id, template="invoice_created",
                           subject=f"Invoice #{unpaid.number}", body_text="Your invoice", to_address=c.email,
                           sent_at=NOW))
    _add(session, Quote(client_id=cid, subject="Dedicated server", total=Decimal("99.00"), date_created=TODAY))
    _add(session, Order(client_id=cid, order_number=f"ORD-{tag}", amount=Decimal("10.00"), invoice_id=unpaid.id,
                        date=NOW))
    _add(session, Ticket(client_id=cid, subject="Help", date=NOW))
    _add(session, ClientFile(client_id=cid, title="Contract", filename=f"contract-{tag}.pdf", admin_only=True))
    if with_affiliate:
        _add(session, Affiliate(client_id=cid, visitors=3, balance=Decimal("5.00"), withdrawn=Decimal("1.00")))
    _add(session, ClientNote(client_id=cid, note=f"Called {tag}", sticky=True))
    _add(session, ModuleCommand(client_id=cid, item_type="service", item_id=terminated.id, command="terminate",
                                status="succeeded", created_at=NOW))
    _add(session, ClientExport(client_id=cid, filename=f"client-{cid}-old.json", size_bytes=2, sha256="0" * 64,
                               request_key=f"old-export-{tag}", created_at=NOW))
    _add(session, JobFailure(actor="generate_due_invoices", client_id=cid, error="ValidationError",
                             reason="test", created_at=NOW))
    return Records(client_id=cid, user_id=user.id, shared_user_id=shared_user.id if shared_user else None,
                   unpaid_invoice_id=unpaid.id, paid_invoice_id=paid.id, draft_invoice_id=draft.id,
                   pending_invoice_id=pending.id, service_id=service.id, terminated_service_id=terminated.id,
                   addon_id=addon.id, domain_id=domain.id, billable_id=billable.id, pay_method_id=card.id,
                   transaction_ids=[tx_paid.id, tx_free.id], tag=tag)


def rows_of_client(session: Session, client_id: int) -> dict[str, int]:
    """How many rows each table with a ``client_id`` holds for the client (non-zero only)."""
    from billingworker.domain.accounts.deletion import client_tables

    out = {}
    for table in client_tables():
        n = session.scalar(select(func.count()).select_from(table).where(table.c.client_id == client_id))
        if n:
            out[table.name] = n
    return out
