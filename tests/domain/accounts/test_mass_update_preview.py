"""A mass update's preview (SPEC §9): what the update would do, by its own plan, writing nothing;
on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from billingworker.domain.accounts.mass_update import mass_update
from billingworker.domain.accounts.mass_update_preview import preview_mass_update
from billingworker.domain.errors import NotFound, ValidationError
from billingworker.domain.models import Base, Client, Invoice, InvoiceItem, Service
from tests import factories as f

DAY = date(2026, 1, 10)
D = Decimal


def every_row(session: Session) -> dict[str, list[tuple]]:
    """Every row of every table, sorted: the whole database, to compare before and after."""
    session.expire_all()
    return {table.name: sorted((tuple(row) for row in session.execute(select(table))), key=repr)
            for table in Base.metadata.sorted_tables}


@pytest.fixture
def hosting(session):
    """A client with 4.00 of credit, a 60.00 monthly service due 1 Feb, its 3.00 addon (untaxed)
    and a domain due 1 March; VAT 20 %."""
    f.tax_rule(session, rate="20")
    c = f.client(session, credit_balance=D("4.00"))
    svc = f.service(session, c, next_due_date=date(2026, 2, 1), amount=D("60.00"), taxed=True)
    add = f.addon(session, svc, next_due_date=date(2026, 2, 1), amount=D("3.00"), taxed=False)
    dom = f.domain(session, c, next_due_date=date(2026, 3, 1), amount=D("365.00"))
    session.commit()
    return c, svc, add, dom


CHANGES = {"next_due_date": "2026-02-06", "status": "Suspended", "payment_method": "paypal",
           "module_command": "suspend"}


def test_a_preview_writes_nothing_even_when_committed(session, hosting):
    # Given the whole database
    c, svc, add, _ = hosting
    before = every_row(session)
    # When a mass update with a prorata invoice, new values and a module command is previewed,
    # and the caller commits
    preview = preview_mass_update(session, c.id, [("service", svc.id), ("addon", add.id)], CHANGES,
                                  create_prorata_invoice=True, as_of=DAY)
    session.commit()
    # Then not one row changed, and the preview has something to say
    assert every_row(session) == before
    assert preview.prorata_total == D("10.50") and preview.invoice is not None and len(preview.commands) == 2


def test_the_preview_says_what_the_update_then_does(session, hosting):
    # Given a preview
    c, svc, add, _ = hosting
    items = [("service", svc.id), ("addon", add.id)]
    preview = preview_mass_update(session, c.id, items, CHANGES, create_prorata_invoice=True, as_of=DAY)
    session.rollback()
    # Then it lists each thing's changes, before and after
    assert [(u.item_type, u.item_id, u.label) for u in preview.updates] == [
        ("service", svc.id, "Shared Hosting - example.com"), ("addon", add.id, "Addon: Backups")]
    assert preview.updates[0].fields == {
        "status": ("Active", "Suspended"), "payment_method": ("stripe", "paypal"),
        "next_due_date": (date(2026, 2, 1), date(2026, 2, 6)),
        "next_invoice_date": (date(2026, 2, 1), date(2026, 2, 6)), "due_day": (1, 6)}
    # the prorata lines (60 × 5 / 30 taxed, 3 × 5 / 30 untaxed) and the invoice with tax and credit
    assert [(ln.item_type, ln.amount, ln.days) for ln in preview.prorata_items] == [
        ("service", D("10.00"), 5), ("addon", D("0.50"), 5)]
    inv = preview.invoice
    assert (inv.totals.subtotal, inv.totals.tax1, inv.totals.total, inv.credit_applied, inv.balance_due,
            inv.payment_method, inv.date_due) == (D("10.50"), D("2.00"), D("12.50"), D("4.00"), D("8.50"),
                                                  "paypal", DAY)
    assert preview.commands == (("service", svc.id, "suspend"), ("addon", add.id, "suspend"))
    assert preview.currency == "USD"
    # When the update itself runs
    done = mass_update(session, c.id, items, CHANGES, create_prorata_invoice=True, as_of=DAY,
                       now=datetime(2026, 1, 10, 9, tzinfo=UTC), request_key="k")
    session.commit()
    # Then it made exactly that: the lines, the invoice, the values, the commands
    assert done.prorata_items == list(preview.prorata_items) and done.prorata_total == preview.prorata_total
    written = session.get(Invoice, done.invoice_id)
    assert (written.subtotal, written.tax1, written.total, written.credit_applied, written.balance_due,
            written.payment_method) == (D("10.50"), D("2.00"), D("12.50"), D("4.00"), D("8.50"), "paypal")
    assert [i.description for i in session.scalars(select(InvoiceItem).order_by(InvoiceItem.id))] == [
        ln.description for ln in preview.prorata_items]
    s = session.get(Service, svc.id)
    assert {name: getattr(s, name) for name in preview.updates[0].fields} == {
        name: after for name, (_, after) in preview.updates[0].fields.items()}
    assert [(q.item_type, q.item_id) for q in done.commands] == [(t, i) for t, i, _ in preview.commands]


def test_a_negative_prorata_previews_no_invoice(session, hosting):
    c, svc, _, _ = hosting
    before = every_row(session)
    preview = preview_mass_update(session, c.id, [("service", svc.id)], {"next_due_date": "2026-01-27"},
                                  create_prorata_invoice=True, as_of=DAY)
    assert preview.prorata_total == D("-10.00") and preview.invoice is None and preview.commands == ()
    assert preview.as_dict()["invoice"] is None
    assert every_row(session) == before


def test_an_unchanged_field_is_not_listed(session, hosting):
    c, svc, _, _ = hosting
    preview = preview_mass_update(session, c.id, [("service", svc.id)],
                                  {"status": "Active", "billing_cycle": "Annually"}, as_of=DAY)
    assert preview.updates[0].fields == {"billing_cycle": ("Monthly", "Annually")}


def test_the_preview_as_json(session, hosting):
    c, svc, _, _ = hosting
    data = preview_mass_update(session, c.id, [("service", svc.id)], {"next_due_date": "2026-02-06"},
                               create_prorata_invoice=True, as_of=DAY).as_dict()
    assert data["prorata_total"] == "10.00" and data["currency"] == "USD"
    assert data["prorata_items"][0]["period_start"] == "2026-02-01" and data["prorata_items"][0]["amount"] == "10.00"
    assert data["updates"][0]["changes"]["next_due_date"] == {"before": "2026-02-01", "after": "2026-02-06"}
    assert data["invoice"]["total"] == "12.00" and data["invoice"]["balance_due"] == "8.00"


@pytest.mark.parametrize(("items", "changes", "error", "field"), [
    ([("service", 999)], {"status": "Active"}, NotFound, "items[0].id"),
    (None, {"colour": "red"}, ValidationError, "changes.colour"),
    (None, {"next_due_date": "2026-02-30"}, ValidationError, "changes.next_due_date"),
])
def test_bad_input_is_refused_as_the_update_refuses_it(session, hosting, items, changes, error, field):
    c, svc, _, _ = hosting
    before = every_row(session)
    with pytest.raises(error) as err:
        preview_mass_update(session, c.id, items or [("service", svc.id)], changes, as_of=DAY)
    assert err.value.field == field
    session.rollback()
    assert every_row(session) == before


def test_a_preview_for_a_client_without_currency_is_refused_like_the_update(session, hosting):
    c, svc, _, _ = hosting
    session.get(Client, c.id).currency_id = None
    session.commit()
    with pytest.raises(ValidationError) as err:
        preview_mass_update(session, c.id, [("service", svc.id)], {"next_due_date": "2026-02-06"},
                            create_prorata_invoice=True, as_of=DAY)
    assert err.value.field == "currency_id"
