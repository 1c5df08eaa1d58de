"""Small builders for test data: each returns the flushed ORM object with sensible defaults."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from billingworker.domain.models import (
    Addon,
    BillableItem,
    Client,
    ClientGroup,
    Currency,
    Domain,
    PayMethod,
    Service,
    TaxRule,
)


def _add(session: Session, obj):
    session.add(obj)
    session.flush()
    return obj


def currency(session: Session, code: str = "USD", **kw: Any) -> Currency:
    kw.setdefault("prefix", "$" if code == "USD" else "")
    kw.setdefault("suffix", code)
    kw.setdefault("minor_units", 2)
    return _add(session, Currency(code=code, **kw))


def client(session: Session, *, currency_id: int | None = None, **kw: Any) -> Client:
    if currency_id is None and "currency" not in kw:
        existing = session.query(Currency).filter_by(code="USD").one_or_none()
        currency_id = (existing or currency(session)).id
    kw.setdefault("first_name", "Ada")
    kw.setdefault("last_name", "Lovelace")
    kw.setdefault("email", f"client{session.query(Client).count() + 1}@example.com")
    kw.setdefault("country", "US")
    kw.setdefault("status", "Active")
    return _add(session, Client(currency_id=currency_id, **kw))


def group(session: Session, **kw: Any) -> ClientGroup:
    kw.setdefault("name", "Resellers")
    return _add(session, ClientGroup(**kw))


def service(session: Session, client: Client, *, next_due_date: date, **kw: Any) -> Service:
    kw.setdefault("name", "Shared Hosting")
    kw.setdefault("domain", "example.com")
    kw.setdefault("amount", Decimal("10.00"))
    kw.setdefault("billing_cycle", "Monthly")
    kw.setdefault("payment_method", "stripe")
    kw.setdefault("status", "Active")
    kw.setdefault("next_invoice_date", next_due_date)
    kw.setdefault("due_day", next_due_date.day)
    return _add(session, Service(client_id=client.id, next_due_date=next_due_date, **kw))


def addon(session: Session, service: Service, *, next_due_date: date, **kw: Any) -> Addon:
    kw.setdefault("name", "Backups")
    kw.setdefault("amount", Decimal("2.00"))
    kw.setdefault("billing_cycle", "Monthly")
    kw.setdefault("payment_method", service.payment_method)
    kw.setdefault("status", "Active")
    kw.setdefault("next_invoice_date", next_due_date)
    kw.setdefault("due_day", next_due_date.day)
    return _add(session, Addon(client_id=service.client_id, service_id=service.id,
                               next_due_date=next_due_date, **kw))


def domain(session: Session, client: Client, *, next_due_date: date, **kw: Any) -> Domain:
    kw.setdefault("domain", "example.com")
    kw.setdefault("amount", Decimal("15.00"))
    kw.setdefault("billing_cycle", "Annually")
    kw.setdefault("payment_method", "stripe")
    kw.setdefault("status", "Active")
    kw.setdefault("next_invoice_date", next_due_date)
    kw.setdefault("due_day", next_due_date.day)
    return _add(session, Domain(client_id=client.id, next_due_date=next_due_date, **kw))


def billable(session: Session, client: Client, *, due_date: date, **kw: Any) -> BillableItem:
    kw.setdefault("description", "Consulting")
    kw.setdefault("amount", Decimal("50.00"))
    kw.setdefault("invoice_action", "due_date")
    return _add(session, BillableItem(client_id=client.id, due_date=due_date, **kw))


def tax_rule(session: Session, *, level: int = 1, rate: str = "20", country: str = "", state: str = "",
             name: str = "VAT") -> TaxRule:
    return _add(session, TaxRule(level=level, rate=Decimal(rate), country=country, state=state, name=name))


def card(session: Session, client: Client, **kw: Any) -> PayMethod:
    kw.setdefault("type", "RemoteCreditCard")
    kw.setdefault("gateway_name", "testgateway")
    kw.setdefault("card_last_four", "4242")
    kw.setdefault("gateway_token", "tok_4242424242424242")
    kw.setdefault("is_default", True)
    return _add(session, PayMethod(client_id=client.id, **kw))
