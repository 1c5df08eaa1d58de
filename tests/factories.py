"""Small builders for test data: each returns the flushed ORM object with sensible defaults."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session

from billingworker.adapters.server_module import module_for
from billingworker.db import session_factory, unit_of_work
from billingworker.domain.accounts.module_commands import NewCommand, queue_module_commands, run_queued_command
from billingworker.domain.accounts.password_reset import ResetRequest, request_password_reset
from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.billing.tax import Rate, compute_totals
from billingworker.domain.models import (
    Addon,
    Base,
    BillableItem,
    Client,
    ClientGroup,
    CreditHistory,
    Currency,
    Domain,
    Invoice,
    InvoiceItem,
    InvoiceKind,
    OutboxEmail,
    PaymentCapture,
    PayMethod,
    Service,
    TaxRule,
    Transaction,
    User,
)
from billingworker.domain.money import round_money
from billingworker.domain.payments.captures import capture_due_payments_for_clients
from billingworker.domain.settings import save_settings


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


def invoice(session: Session, client: Client, *, due: date, lines: list[tuple[str, str, bool]] | None = None,
            status: str = "Unpaid", created: date | None = None, rate1: Any = None, **kw: Any) -> Invoice:
    """An invoice with its items (type ``manual``), totals computed as invoicing computes them
    (``rate1``: a ``tax.Rate``), numbered unless Draft; ``amount_paid`` / ``credit_applied`` in ``kw``."""
    from sqlalchemy import func, select

    from billingworker.domain.billing.tax import compute_totals

    lines = lines if lines is not None else [("Shared Hosting", "100.00", False)]
    minor = session.get(Currency, client.currency_id).minor_units if client.currency_id else 2
    totals = compute_totals([(Decimal(a), t) for _, a, t in lines], rate1, None, minor_units=minor)
    paid, credit = Decimal(kw.pop("amount_paid", "0")), Decimal(kw.pop("credit_applied", "0"))
    number = None if status == "Draft" else (session.scalar(select(func.max(Invoice.number))) or 0) + 1
    inv = _add(session, Invoice(
        number=number, client_id=client.id, currency_id=client.currency_id, status=status,
        date_created=created or due, date_due=due, subtotal=totals.subtotal, tax1=totals.tax1, tax2=totals.tax2,
        tax_name1=totals.name1, tax_rate1=totals.rate1, total=totals.total, amount_paid=paid, credit_applied=credit,
        balance_due=max(totals.total - paid - credit, Decimal(0)), **kw))
    for description, amount, taxed in lines:
        session.add(InvoiceItem(invoice_id=inv.id, client_id=client.id, item_type="manual", description=description,
                                amount=Decimal(amount), taxed=taxed))
    session.flush()
    return inv


# == Shared test helpers ==========================================================================
# Helpers that used to live in one test module and were imported from there by others. Names carry
# their topic (``capture_at``, ``statement_at``): importers alias them to their short local names.


# Some helpers below take ``client`` / ``card`` arguments, which hide the builders of those names.
_client_builder, _card_builder = client, card


# -- Emails: rendering and delivery (from tests/domain/messaging/test_emails.py, test_delivery.py) -

EMAIL_INVOICE_LINE = "Shared Hosting - example.com (2024-05-01 - 2024-05-31)"
DELIVERY_NOW = datetime(2024, 5, 1, 9, 30, tzinfo=UTC)
SENDER = "Acme Billing <billing@acme.test>"


def email_invoice(
    session: Session,
    client: Client,
    *,
    lines: list[tuple[str, str, bool]] | None = None,
    rate1: Rate | None = None,
    rate2: Rate | None = None,
    credit_applied: str = "0",
    kind: str = "standard",
    payment_method: str = "banktransfer",
) -> Invoice:
    """An Unpaid invoice with its items, totals computed by the tax module."""
    lines = lines if lines is not None else [(EMAIL_INVOICE_LINE, "10.00", True)]
    currency_id = client.currency_id
    minor = 2
    if currency_id is not None:
        minor = session.get(Currency, currency_id).minor_units
    totals = compute_totals([(Decimal(a), t) for _, a, t in lines], rate1, rate2, minor_units=minor)
    credit = Decimal(credit_applied)
    number = (session.scalar(select(func.max(Invoice.number))) or 1000) + 1
    invoice = Invoice(
        number=number,
        client_id=client.id,
        currency_id=currency_id,
        kind=kind,
        status="Unpaid",
        date_created=date(2024, 5, 1),
        date_due=date(2024, 5, 15),
        payment_method=payment_method,
        subtotal=totals.subtotal,
        tax1=totals.tax1,
        tax2=totals.tax2,
        tax_name1=totals.name1,
        tax_name2=totals.name2,
        tax_rate1=totals.rate1,
        tax_rate2=totals.rate2,
        total=totals.total,
        credit_applied=credit,
        balance_due=round_money(totals.total - credit, minor),
    )
    return _with_lines(session, invoice, lines)


def _with_lines(session: Session, invoice: Invoice, lines) -> Invoice:
    """Write ``invoice`` and its manual lines ``(description, amount, taxed)``."""
    session.add(invoice)
    session.flush()
    for description, amount, taxed in lines:
        session.add(InvoiceItem(invoice_id=invoice.id, client_id=invoice.client_id, item_type="manual",
                                description=description, amount=Decimal(amount), taxed=taxed))
    session.flush()
    return invoice


def invoice_email(session: Session, *, client: Client | None = None, template: str = "invoice_created",
                  client_id_on_row: bool = True) -> OutboxEmail:
    client = client or _client_builder(session, first_name="Ada", email="ada@example.com")
    invoice = email_invoice(session, client)
    outbox = OutboxEmail(template=template, client_id=client.id if client_id_on_row else None,
                         context=json.dumps({"invoice_id": invoice.id}),
                         dedupe_key=f"{template}:{invoice.id}")
    session.add(outbox)
    session.flush()
    return outbox


# -- Account statements and reports (from tests/domain/reports/test_statements.py) ----------------

def statement_invoice(session, client: Client, number: int, created: date, total: str, status: str = "Paid",
                      kind: str = InvoiceKind.STANDARD, due: str | None = None) -> Invoice:
    D = Decimal
    inv = Invoice(client_id=client.id, currency_id=client.currency_id, number=number if status != "Draft" else None,
                  kind=kind, status=status, date_created=created, date_due=created, subtotal=D(total),
                  total=D(total), balance_due=D(due if due is not None else ("0" if status == "Paid" else total)))
    session.add(inv)
    session.flush()
    return inv


def statement_txn(session, client: Client, at: datetime, money_in: str = "0", money_out: str = "0",
                  fees: str = "0", invoice_id: int | None = None, description: str = "") -> Transaction:
    D = Decimal
    t = Transaction(client_id=client.id, invoice_id=invoice_id, currency_id=client.currency_id, date=at,
                    gateway="stripe", transaction_id=f"tx-{at.isoformat()}-{money_in}-{money_out}",
                    description=description, amount_in=D(money_in), amount_out=D(money_out), fees=D(fees))
    session.add(t)
    session.flush()
    return t


def statement_credit(session, client: Client, day: date, amount: str, description: str, *,
                     source: str = "job:adjust_credit", invoice_id: int | None = None) -> CreditHistory:
    D = Decimal
    line = CreditHistory(client_id=client.id, date=day, description=description, amount=D(amount),
                         balance_after=D(0), invoice_id=invoice_id, source=source)
    session.add(line)
    session.flush()
    return line


def statement_at(day: date, hour: int = 12, minute: int = 0) -> datetime:
    return datetime(day.year, day.month, day.day, hour, minute, tzinfo=UTC)


# -- Card captures (from tests/domain/payments/test_captures.py) ----------------------------------

CAPTURE_DUE = date(2026, 1, 15)


def capture_at(day: date) -> datetime:
    return datetime.combine(day, time(9), tzinfo=UTC)


def capture_setup(session, *, due: date = CAPTURE_DUE, amount: str = "10.00", card: bool = True, **kw):
    """A client with auto CC on, a monthly service due on ``due`` and its invoice (Unpaid)."""
    kw.setdefault("auto_cc_processing", True)
    c = client(session, **kw)
    svc = service(session, c, next_due_date=due, amount=Decimal(amount))
    if card:
        _card_builder(session, c)
    session.commit()
    [invoice_id] = generate_for_clients(session, [c.id], due - timedelta(days=7)).invoice_ids
    session.commit()
    return c, svc, invoice_id


def capture(session, gateway, clients, as_of: date, **kw):
    """Run the capture for ``clients`` on ``as_of`` in its own sessions (the test's session first
    ends its transaction: on SQLite an open one would hold the writer lock)."""
    ids = [c.id for c in clients] if isinstance(clients, list) else [clients.id]
    session.rollback()
    gateways = gateway if callable(gateway) else {"testgateway": gateway}.__getitem__
    return capture_due_payments_for_clients(session_factory(session.get_bind()), ids, as_of, gateways,
                                            now=capture_at(as_of), **kw)


def set_card(session, client, *, token: str, last_four: str) -> None:
    pm = session.execute(select(PayMethod).where(PayMethod.client_id == client.id)).scalar_one()
    pm.gateway_token, pm.card_last_four = token, last_four
    session.commit()


def captures(session, invoice_id: int | None = None) -> list[PaymentCapture]:
    session.rollback()
    session.expire_all()  # a rollback with no transaction open expires nothing
    q = select(PaymentCapture).order_by(PaymentCapture.id)
    if invoice_id is not None:
        q = q.where(PaymentCapture.invoice_id == invoice_id)
    return list(session.execute(q).scalars())


# -- Payment reminders and late fees (from tests/domain/collections/test_reminders.py) ------------

REMINDER_DUE = date(2026, 1, 20)
REMINDER_CREATED = date(2026, 1, 1)


def reminder_invoice(session: Session, client: Client, *, due: date = REMINDER_DUE, created: date = REMINDER_CREATED,
                     status: str = "Unpaid", kind: str = "standard",
                     lines: list[tuple[str, str, bool]] | None = None, rate1: Rate | None = None,
                     rate2: Rate | None = None, compound: bool = False, inclusive: bool = False,
                     credit_applied: str = "0", amount_paid: str = "0") -> Invoice:
    """An invoice with its items, totals computed the way invoicing computes them."""
    lines = lines if lines is not None else [("Shared Hosting - example.com", "10.00", True)]
    minor = session.get(Currency, client.currency_id).minor_units if client.currency_id else 2
    totals = compute_totals([(Decimal(a), t) for _, a, t in lines], rate1, rate2, inclusive=inclusive,
                            compound=compound, minor_units=minor)
    credit, paid = Decimal(credit_applied), Decimal(amount_paid)
    number = (session.scalar(select(func.max(Invoice.number))) or 0) + 1
    invoice = Invoice(
        number=None if status == "Draft" else number, client_id=client.id, currency_id=client.currency_id,
        kind=kind, status=status, date_created=created, date_due=due, payment_method="banktransfer",
        subtotal=totals.subtotal, tax1=totals.tax1, tax2=totals.tax2, tax_name1=totals.name1,
        tax_name2=totals.name2, tax_rate1=totals.rate1, tax_rate2=totals.rate2, total=totals.total,
        credit_applied=credit, amount_paid=paid,
        balance_due=max(round_money(totals.total - credit - paid, minor), Decimal(0)))
    return _with_lines(session, invoice, lines)


def count_rows(session: Session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def table_counts(session: Session) -> dict[str, int]:
    """Row counts of every table, read in the session's current transaction."""
    return {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


# -- Password resets (from tests/domain/accounts/test_password_reset.py) --------------------------

RESET_NOW = datetime(2026, 1, 10, 9, 0, tzinfo=UTC)


def make_user(session: Session, email: str = "ada@example.com", **kw) -> User:
    kw.setdefault("first_name", "Ada")
    user = User(email=email, **kw)
    session.add(user)
    session.flush()
    return user


def request_reset(session: Session, key: str = "req:1", *, now: datetime = RESET_NOW, **kw) -> ResetRequest:
    kw.setdefault("requested_by", "client")
    if "user_id" not in kw and "email" not in kw:
        kw["email"] = "ada@example.com"
    return request_password_reset(session, request_key=key, now=now, **kw)


# -- Server module commands (from tests/domain/accounts/test_module_commands.py) ------------------

COMMAND_NOW = datetime(2026, 1, 10, 9, tzinfo=UTC)


def queue_command(session, item_type, item_id, client_id, command="suspend", key="k:1", params=None, now=COMMAND_NOW):
    [queued] = queue_module_commands(session, [NewCommand(item_type, item_id, client_id, command, params or {}, key)],
                                     now=now)
    return queued


def run_command(session, command_id, modules=module_for, now=COMMAND_NOW, expect=None):
    return run_queued_command(session, command_id, module_for=modules, now=now, expect=expect)


# -- The daily run (from tests/actors/test_daily_run.py) ------------------------------------------

RUN_DAY = date(2026, 1, 10)


def table_counts_at_rest(session):
    """Row counts of every table: the dry run must leave them all as they were."""
    session.rollback()
    counts = {t.name: session.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}
    session.rollback()  # SQLite: do not keep the writer lock while the workers run
    return counts


def seed_day(session):
    save_settings(session, late_fee_days=3, late_fee_amount="5.00", late_fee_type="fixed")
    # a client with things due soon
    a = client(session)
    service(session, a, next_due_date=date(2026, 1, 15), amount=Decimal("10.00"))
    # a client with an invoice 5 days overdue: a late fee and the first overdue notice
    b = client(session)
    service(session, b, next_due_date=date(2025, 12, 20), amount=Decimal("20.00"))
    # a client paying by card, invoice due today
    c = client(session, auto_cc_processing=True)
    card(session, c)
    service(session, c, next_due_date=date(2026, 1, 10), amount=Decimal("30.00"), payment_method="testgateway")
    session.commit()
    return a, b, c


# -- Outbox rows, written through an engine (from tests/ops/test_outbox.py) -----------------------

def outbox_row(engine: Engine, client_id: int | None, *, status: str, error: str = "", template: str = "client_signup",
               age: timedelta = timedelta(hours=1)) -> int:
    # Relative to the call, not to the import: a long test run must not age the rows.
    now = datetime.now(UTC)
    with unit_of_work(engine) as session:
        row = OutboxEmail(client_id=client_id, template=template, context="{}", status=status,
                          attempts=3 if error else 0, last_error=error, created_at=now - age,
                          claimed_at=now - age / 2 if error else None)
        session.add(row)
        session.commit()
        return row.id


def a_client(engine: Engine, email: str = "ada@example.com") -> int:
    with Session(engine, expire_on_commit=False) as session:
        row = client(session, email=email)
        session.commit()
        return row.id


def status_of(engine: Engine, email_id: int) -> str:
    with engine.connect() as conn:
        return conn.execute(text("SELECT status FROM email_outbox WHERE id = :i"), {"i": email_id}).scalar_one()


# ---------------------------------------------------------------------------------------------
# Concurrency (was tests/domain/billing/test_concurrency.py)

def race(engine, *work: Callable[[Session], object], retries: int = 3) -> list:
    """Run each callable in its own thread and session, all released at once; commit each.

    A deadlock or a lock wait timeout (``store.conflicts.is_transient``) is run again from the
    start, up to ``retries`` times, as the worker's retry would: the database gave the
    transaction up, and the guarantee under test is about what the work leaves once it is done
    (``retries=0``: a test that no deadlock happens at all)."""
    from billingworker.store.conflicts import is_transient

    barrier = threading.Barrier(len(work))
    results: list = [None] * len(work)
    errors: list = []

    def run(n: int, fn) -> None:
        for attempt in range(retries + 1):
            session = session_factory(engine)()
            try:
                if attempt == 0:
                    barrier.wait()
                results[n] = fn(session)
                session.commit()
                return
            except Exception as exc:  # noqa: BLE001 - reported below
                session.rollback()
                if not is_transient(exc) or attempt == retries:
                    errors.append(exc)
                    return
            finally:
                session.close()

    threads = [threading.Thread(target=run, args=(n, fn)) for n, fn in enumerate(work)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


# ---------------------------------------------------------------------------------------------
# Template attacks on the written-message sandbox (was tests/domain/messaging/test_message_budget.py)

FORBIDS = "uses something the sandbox forbids"
STEPS = "exceeds the rendering budget (steps)"
SIZE = "exceeds the rendering budget (size)"
DEPTH = "exceeds the rendering budget (depth)"
FOUR_NESTED_RANGES = ("{% for a in range(1000) %}{% for b in range(1000) %}{% for c in range(1000) %}"
                      "{% for d in range(1000) %}{% endfor %}{% endfor %}{% endfor %}{% endfor %}")


def _replace_chain(times: int, method: bool = True) -> str:
    step = ".replace('a', 'aaaa')" if method else "|replace('a', 'aaaa')"
    return "{{ (('ab' * 100)" + step * times + ")|length }}"


#: (id, field, source, what the refusal says). Each one allocated gigabytes, ran for minutes or
#: crashed the render with MemoryError/RecursionError (retried 10 times) before the budget.
ATTACKS = [
    ("format width as a string", "body", "{{ '{0:{1}}'.format('x', '4000000000') }}", FORBIDS),
    ("format width as a number", "body", "{{ '{0:{1}}'.format('x', 4000000000) }}", FORBIDS),
    ("format_map width", "body", "{{ '{a:>{w}}'.format_map({'a': 'x', 'w': '4000000000'}) }}", FORBIDS),
    ("format precision", "body", "{{ '{:.4000000000f}'.format(1.0) }}", FORBIDS),
    ("format repr of a nested list", "body",
     "{% set a = ['x' * 1000] * 100 %}{{ '{0!r}'.format([a] * 10) }}", FORBIDS),
    ("percent star width", "body", "{{ '%*s' % (4000000000, 'x') }}", FORBIDS),
    ("percent star width as a string", "body", "{{ '%*s' % ('4000000000', 'x') }}", FORBIDS),
    ("percent literal width", "body", "{{ '%4000000000s' % 'x' }}", FORBIDS),
    ("percent many fields", "body", "{{ ('%262144s' * 20) % (('x',) * 20) }}", FORBIDS),
    ("format filter star width", "body", "{{ '%*s'|format(4000000000, 'x') }}", FORBIDS),
    ("format filter literal width", "body", "{{ '%4000000000s'|format('x') }}", FORBIDS),
    ("format filter keyword width", "body", "{{ '%(a)4000000000s'|format(a='x') }}", FORBIDS),
    ("nested list literals three deep", "body",
     "{% set s = 'x' * 5000 %}{% set a = [s, s, s, s, s, s, s, s, s, s] %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
     "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c|length }}", FORBIDS),
    ("nested dict literals", "body",
     "{% set s = 'x' * 30000 %}{% set a = {'a': s, 'b': s, 'c': s} %}{% set b = {'a': a, 'b': a, 'c': a} %}"
     "{{ b|length }}", FORBIDS),
    ("map center", "body", "{{ range(1000)|map('string')|map('center', 262144)|list|length }}", SIZE),
    ("list of lists repeated", "body", "{% set l = ['x' * 2000] * 100 %}{{ ([l] * 400)|length }}", FORBIDS),
    ("string repeated", "body", "{{ 'x' * 10 ** 9 }}", FORBIDS),
    ("four nested ranges, empty body", "body", FOUR_NESTED_RANGES, STEPS),
    ("a macro calling itself", "body", "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", DEPTH),
    ("a macro calling itself twice", "body",
     "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(30) }}", STEPS),
    ("a recursive loop", "body", "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", DEPTH),
    ("huge join filter", "body", "{{ range(1000)|map('string')|join('x' * 1000) }}", FORBIDS),
    ("huge join method", "body", "{{ ('x' * 1000).join(range(1000)|map('string')) }}", FORBIDS),
    ("replace amplification chain", "body", _replace_chain(6), FORBIDS),
    ("replace filter amplification chain", "body", _replace_chain(6, method=False), FORBIDS),
    ("output collected in a set block", "body",
     "{% set a = 'x' * 200000 %}{% set b %}{% for i in range(1000) %}{{ a }}{% endfor %}{% endset %}{{ b|length }}",
     SIZE),
    ("loop text collected in a set block", "body",
     "{% set b %}{% for i in range(1000) %}{% for j in range(90) %}" + "z" * 600
     + "{% endfor %}{% endfor %}{% endset %}{{ b|length }}", SIZE),
    ("a macro's text built again and again", "body",
     "{% macro m() %}" + "y" * 60000 + "{% endmacro %}{% for i in range(1000) %}{% set _ = m() %}{% endfor %}", SIZE),
    ("batch filled to a billion", "body", "{{ [1]|batch(1000000000, 'x')|list|length }}", FORBIDS),
    ("a billion slices", "body", "{{ [1]|slice(1000000000)|list|length }}", FORBIDS),
    ("sum of lists", "body", "{{ ([[1] * 100] * 1000)|sum(start=[])|length }}", FORBIDS),
    ("int.to_bytes", "body", "{{ (5).to_bytes(1000000000, 'big')|length }}", FORBIDS),
    ("str.translate", "body", "{{ ('a' * 1000).translate({97: 'x' * 100000})|length }}", FORBIDS),
    ("ljust", "body", "{{ ''.ljust(4000000000)|length }}", FORBIDS),
    ("indent", "body", "{{ ('\\n' * 1000)|indent(100000)|length }}", FORBIDS),
    ("wordwrap of a long word", "body", "{{ ('x' * 200000)|wordwrap(1)|length }}", FORBIDS),
    ("round to a billion digits", "body", "{{ 5|round(-10 ** 9) }}", FORBIDS),
    ("tojson indented by a billion", "body", "{{ [[1]]|tojson(indent=10 ** 9) }}", "is not a valid template"),
    ("parentheses nested 500 deep", "body", "{{ " + "(" * 500 + "1" + ")" * 500 + " }}", DEPTH),
    ("too many tokens to compile", "body", "{{ [" + "1," * 30000 + "] }}", SIZE),
    ("string repeated, in the subject", "subject", "{{ 'x' * 10 ** 9 }}", FORBIDS),
    ("nested ranges, in the subject", "subject", FOUR_NESTED_RANGES, STEPS),
]
ATTACK_IDS = [a[0] for a in ATTACKS]
