"""Payment jobs (docs/jobs.md)."""

from __future__ import annotations

from functools import partial

from ..domain.errors import NotFound
from ..domain.models import Currency, Invoice
from ..domain.payments import payments
from ..runtime import runtime
from .arguments import argument_rules, parse_amount, parse_id, parse_money, parse_text
from .base import job
from .emails import delivery_messages
from .unit_of_work import UnitOfWork


@job()
@argument_rules(invoice_id=parse_id, amount=parse_amount, fees=parse_amount,
                gateway=partial(parse_text, max_length=50), transaction_id=parse_text)
def apply_payment(invoice_id, amount, gateway, transaction_id, fees="0"):
    """Record a payment; idempotent per (gateway, transaction_id)."""
    invoice_id = parse_id("invoice_id", invoice_id)
    gateway = parse_text("gateway", gateway, max_length=50)
    transaction_id = parse_text("transaction_id", transaction_id)
    rt = runtime()
    with UnitOfWork(rt.engine) as work:
        minor_units = work.session.query(Currency.minor_units).join(Invoice, Invoice.currency_id == Currency.id).filter(
            Invoice.id == invoice_id).scalar()
        if minor_units is None and work.session.get(Invoice, invoice_id) is None:
            raise NotFound("invoice_id", invoice_id, "invoice")
        units = minor_units if minor_units is not None else 2
        value = parse_money("amount", amount, minor_units=units)
        fee = parse_money("fees", fees, minor_units=units, allow_zero=True)
        result = payments.apply_payment(work.session, invoice_id, value, gateway=gateway, transaction_id=transaction_id,
                                        fees=fee, as_of=rt.clock.today(), now=rt.clock.now())
        work.send_after_commit(*delivery_messages(result.email_ids))
        work.commit()
    return {"outcome": result.outcome, "invoice_status": result.invoice_status,
            "balance_due": str(result.balance_due), "credited": str(result.credited)}
