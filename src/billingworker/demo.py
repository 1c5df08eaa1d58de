"""``billingworker demo``: the main job on the embedded defaults, with no server at all.

A fresh SQLite file, demo clients seeded, one day's ``generate_due_invoices`` run through the
same actors production uses (an in-process broker and a real Dramatiq worker thread pool), the
emails rendered into a folder, and a readable summary.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path

import click
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .config import get_config
from .domain.models import (
    Addon,
    BillableItem,
    Client,
    ClientGroup,
    Currency,
    Domain,
    EmailLog,
    Invoice,
    InvoiceItem,
    JobFailure,
    Product,
    Service,
    Setting,
    TaxRule,
)
from .domain.money import format_money
from .domain.settings import save_settings


@dataclass(frozen=True)
class DemoPaths:
    database: Path
    mail: Path


#: The demo's people: (first, last, email, country, state, currency code, extra columns).
PEOPLE = [
    ("Ada", "Lovelace", "ada@example.com", "GB", "", "GBP", {}),
    ("Grace", "Hopper", "grace@example.com", "US", "TX", "USD", {}),
    ("Alan", "Turing", "alan@example.com", "GB", "", "GBP", {"credit_balance": Decimal("25.00")}),
    ("Katherine", "Johnson", "katherine@example.com", "US", "VA", "USD", {"tax_exempt": True}),
    ("Konrad", "Zuse", "konrad@example.com", "DE", "", "EUR", {}),
    ("Margaret", "Hamilton", "margaret@example.com", "CA", "QC", "USD", {"group": True}),
    ("Edsger", "Dijkstra", "edsger@example.com", "NL", "", "EUR", {"separate_invoices": True}),
    ("Barbara", "Liskov", "barbara@example.com", "US", "MA", "USD", {}),
    ("Donald", "Knuth", "donald@example.com", "US", "CA", "USD", {"credit_balance": Decimal("500.00")}),
    ("Frances", "Allen", "frances@example.com", "US", "NY", "USD", {"status": "Closed"}),
    ("Radia", "Perlman", "radia@example.com", "US", "WA", None, {}),  # no currency: shows a failure
    ("Tim", "Berners-Lee", "tim@example.com", "GB", "", "GBP", {}),
]


def seed_demo(session: Session, today: date, *, clients: int = len(PEOPLE),
              on_client: Callable[[int], None] | None = None) -> int:
    """A small hosting company: the dozen PEOPLE (repeated, numbered, for ``clients`` > 12) in
    four countries, due dates around ``today``; commits. What exists already (currencies, tax
    rules, the group, the products, settings) is reused, never changed, so a seed into a database
    that holds data adds clients and nothing else. ``on_client(n)`` is called after each client
    (progress). Returns the number of clients added."""
    codes = {c.code: c for c in session.execute(select(Currency)).scalars()}
    for code, prefix, default in (("USD", "$", True), ("EUR", "€", False), ("GBP", "£", False)):
        if code not in codes:
            codes[code] = Currency(code=code, prefix=prefix, suffix=code, minor_units=2,
                                   is_default=default and not codes)
            session.add(codes[code])
    if session.scalar(select(func.count()).select_from(TaxRule)) == 0:
        session.add_all([
            TaxRule(level=1, name="VAT", country="GB", rate=Decimal("20")),
            TaxRule(level=1, name="MwSt", country="DE", rate=Decimal("19")),
            TaxRule(level=1, name="GST", country="CA", rate=Decimal("5")),
            TaxRule(level=2, name="QST", country="CA", state="QC", rate=Decimal("9.975")),
            TaxRule(level=1, name="Sales Tax", country="US", state="TX", rate=Decimal("8.25")),
        ])
    resellers = _one(session, ClientGroup, name="Resellers", separate_invoices=True)
    shared = _one(session, Product, name="Shared Hosting Starter", group_name="Hosting", module="cpanel")
    vps = _one(session, Product, name="VPS 2GB", group_name="Servers", module="proxmox")
    session.flush()
    demo_settings = {"company_name": "Demo Hosting Ltd", "system_url": "https://billing.demo-hosting.test/"}
    taken = set(session.execute(select(Setting.name).where(Setting.name.in_(demo_settings))).scalars())
    save_settings(session, **{k: v for k, v in demo_settings.items() if k not in taken})

    def day(offset: int) -> date:
        return today + timedelta(days=offset)

    for number in range(clients):
        n = number % len(PEOPLE)
        first, last, email, country, state, code, extra = PEOPLE[n]
        if number >= len(PEOPLE):
            email = email.replace("@", f"+{number}@")
        extra = dict(extra)
        if extra.pop("group", False):
            extra["group_id"] = resellers.id
        currency = codes[code] if code else None
        client = Client(first_name=first, last_name=last, email=email, country=country, state=state,
                        currency_id=currency.id if currency else None, signup_date=day(-400 + n), **extra)
        session.add(client)
        session.flush()
        site = f"{last.lower().replace('-', '')}{number if number >= len(PEOPLE) else ''}.example"
        due = day(3 + n)  # inside the 14-day window
        svc = Service(client_id=client.id, product_id=shared.id, domain=site, amount=Decimal("9.99"),
                      billing_cycle="Monthly", payment_method="stripe", status="Active", next_due_date=due,
                      next_invoice_date=due, due_day=due.day, registration_date=day(-300))
        session.add(svc)
        session.flush()
        if n % 3 == 0:
            session.add(Addon(client_id=client.id, service_id=svc.id, name="Daily Backups", amount=Decimal("2.50"),
                              billing_cycle="Monthly", payment_method="stripe", status="Active", next_due_date=due,
                              next_invoice_date=due, due_day=due.day))
        if n % 2 == 0:
            session.add(Domain(client_id=client.id, domain=site, amount=Decimal("12.00"), billing_cycle="Annually",
                               payment_method="paypal", status="Active", next_due_date=due, next_invoice_date=due,
                               due_day=due.day, registrar="enom"))
        if n % 4 == 1:
            later = day(40)  # outside the window: waits for a later run
            session.add(Service(client_id=client.id, product_id=vps.id, domain=f"vps.{site}", amount=Decimal("24.00"),
                                billing_cycle="Quarterly", payment_method="stripe", status="Active",
                                next_due_date=later, next_invoice_date=later, due_day=later.day))
        if n == 4:
            session.add(Service(client_id=client.id, product_id=vps.id, domain=f"box.{site}", amount=Decimal("240"),
                                billing_cycle="Annually", payment_method="banktransfer", status="Active",
                                next_due_date=day(10), next_invoice_date=day(10), due_day=day(10).day))
        if n == 7:
            session.add(BillableItem(client_id=client.id, description="Website migration (2 hours)",
                                     amount=Decimal("90.00"), invoice_action="next_invoice", due_date=today))
        if n == 1:
            session.add(Service(client_id=client.id, name="Lifetime licence", amount=Decimal("99.00"),
                                billing_cycle="One Time", status="Active", next_due_date=day(2)))
        if on_client is not None:
            on_client(number + 1)
    session.commit()
    return clients


def _one(session: Session, model, *, name: str, **columns):
    """The row of ``model`` with this name, or a new one."""
    found = session.execute(select(model).where(model.name == name).limit(1)).scalar()
    if found is None:
        found = model(name=name, **columns)
        session.add(found)
    return found


def run_demo(paths: DemoPaths, *, workers: int = 4, echo=click.echo) -> dict:
    """Seed, run the day's generation through the real actors and a worker pool, summarise."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{paths.database}{suffix}").unlink(missing_ok=True)
    paths.mail.mkdir(parents=True, exist_ok=True)
    for old in paths.mail.glob("*.eml"):
        old.unlink()
    url = f"sqlite:///{paths.database}"
    # The demo runs the jobs here (the in-process broker) on its own database and mail folder. It
    # may use the test doubles (a gateway that approves without charging, a module that runs
    # nothing); they exist only when switched on, and only the demo and tests do that.
    config = replace(get_config(), broker_url="stub://", database_url=url, mail_url=f"file://{paths.mail}",
                     payment_gateways=frozenset({"test"}), server_modules=frozenset({"test"}), fan_out_batch_size=5)
    # The adapters' registries read these two switches at each look-up (adapters/gateway.py).
    os.environ["PAYMENT_GATEWAYS"] = "test"
    os.environ["SERVER_MODULES"] = "test"

    from dramatiq import Worker

    from .actors import generate_due_invoices
    from .bootstrap import bootstrap
    from .db import session_factory
    from .migrate import upgrade_engine

    app = bootstrap(config)
    broker, runtime = app.broker, app.runtime
    engine = runtime.engine
    upgrade_engine(engine)
    today = runtime.clock.today()
    with session_factory(engine)() as session:
        seed_demo(session, today)
    echo(f"Seeded demo data into {paths.database} (today is {today}, time zone {runtime.clock.zone}).")

    worker = Worker(broker, worker_threads=workers)
    worker.start()
    started = time.perf_counter()
    try:
        generate_due_invoices.send()
        for _ in range(3):  # the fan-out queues batches, the batches queue emails
            broker.join("billing", fail_fast=False)
            broker.join("emails", fail_fast=False)
    finally:
        worker.stop()
    elapsed = time.perf_counter() - started
    summary = summarise(session_factory(engine)(), paths, elapsed, echo)
    engine.dispose()
    return summary


def summarise(session: Session, paths: DemoPaths, elapsed: float, echo) -> dict:
    rows = session.execute(
        select(Invoice, Client, Currency).join(Client, Client.id == Invoice.client_id)
        .join(Currency, Currency.id == Invoice.currency_id).order_by(Invoice.number)).all()
    echo("")
    echo(f"Generate due invoices: {len(rows)} invoices created in {elapsed:.2f}s")
    echo(f"{'#':>4}  {'client':<22} {'due':<10}  {'lines':>5}  {'total':>14}  {'credit':>10}  status")
    totals: dict[str, Decimal] = {}
    for inv, client, cur in rows:
        lines = session.scalar(select(func.count()).select_from(InvoiceItem).where(InvoiceItem.invoice_id == inv.id))
        totals[cur.code] = totals.get(cur.code, Decimal(0)) + inv.total
        echo(f"{inv.number:>4}  {(client.first_name + ' ' + client.last_name)[:22]:<22} {inv.date_due!s:<10}  "
             f"{lines:>5}  {format_money(inv.total, cur.prefix, cur.code, cur.minor_units):>14}  "
             f"{format_money(inv.credit_applied, cur.prefix, '', cur.minor_units):>10}  {inv.status}")
    echo("Totals: " + ", ".join(f"{code} {amount:,.2f}" for code, amount in sorted(totals.items())))
    failures = list(session.execute(select(JobFailure).order_by(JobFailure.id)).scalars())
    for failure in failures:
        echo(f"Failure recorded for client {failure.client_id} ({failure.actor}): {failure.reason}")
    sent = session.scalar(select(func.count()).select_from(EmailLog))
    files = sorted(paths.mail.glob("*.eml"))
    echo(f"Emails queued and sent: {sent}; written to {paths.mail}/ ({len(files)} .eml files)")
    session.close()
    return {"invoices": len(rows), "emails": sent, "failures": len(failures), "files": len(files)}
