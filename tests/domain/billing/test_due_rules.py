"""The rules of what is due (SPEC §4), on plain rows: no database. ``find_due`` reads the rows
(tested against SQLite and PostgreSQL in test_generate_due_invoices.py); these functions decide."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from types import SimpleNamespace

from billingworker.domain.billing.due_things import (
    DueThings,
    Window,
    _BilledPeriods,
    addon_items,
    billable_items,
    domain_items,
    keep_unbilled,
    service_items,
)
from billingworker.domain.models import InvoiceAction, InvoiceStatus
from billingworker.domain.settings import BillingSettings

AS_OF = date(2026, 1, 10)


def service(id=1, client_id=7, due=date(2026, 1, 20), cycle="Monthly", name="Hosting", domain="", **kw):
    return SimpleNamespace(id=id, client_id=client_id, amount=Decimal("10.00"), billing_cycle=cycle,
                           payment_method="", due=due, due_day=None, taxed=False, domain=domain, name=name, **kw)


def addon(id=1, client_id=7, service_id=1, due=date(2026, 1, 20), name="Backup"):
    return SimpleNamespace(id=id, client_id=client_id, service_id=service_id, name=name, amount=Decimal("2.00"),
                           billing_cycle="Monthly", payment_method="", due=due, due_day=None, taxed=False)


def domain(id=1, client_id=7, name="example.com", due=date(2026, 1, 20), cycle="Annually"):
    return SimpleNamespace(id=id, client_id=client_id, domain=name, amount=Decimal("12.00"), billing_cycle=cycle,
                           payment_method="", due=due, due_day=None, taxed=False)


def billable(id=1, action=InvoiceAction.NEXT_RUN, due=date(2026, 1, 12), count=0, every=0, cycle="", recur_for=0):
    return SimpleNamespace(id=id, client_id=7, description="Setup", amount=Decimal("5.00"), invoice_action=action,
                           due_date=due, recur_every=every, recur_cycle=cycle, recur_for=recur_for,
                           invoice_count=count, payment_method="", taxed=True)


def test_the_window_is_the_cycles_generation_days_or_anything_when_selected():
    settings = BillingSettings(invoice_generation_days=14, invoice_generation_days_by_cycle={"Annually": 30},
                               domain_invoice_generation_days=60)
    window = Window(AS_OF, settings)
    assert window.admits(date(2026, 1, 24), "Monthly") and not window.admits(date(2026, 1, 25), "Monthly")
    assert window.admits(date(2026, 2, 9), "Annually") and not window.admits(date(2026, 2, 10), "Annually")
    assert window.admits(date(2026, 3, 11), "Monthly", domain=True)
    assert window.horizon() == date(2026, 3, 11)  # the widest, for SQL
    assert Window(AS_OF, settings, selected=True).admits(date(2030, 1, 1), "Monthly")


def test_a_service_line_names_its_product_and_domain_and_covers_its_period():
    [candidate], by_domain = service_items([service(domain="Example.COM")], cancelling=set())
    line = candidate.line
    assert line.description == "Hosting - Example.COM (2026-01-20 - 2026-02-19)"
    assert (line.due_date, line.period_end, line.amount) == (date(2026, 1, 20), date(2026, 2, 19), Decimal("10.00"))
    assert candidate.update.values == {"next_invoice_date": date(2026, 2, 20), "due_day": 20}
    assert by_domain == {(7, "example.com"): ("service", 1)}


def test_a_service_with_a_cancellation_request_and_its_addons_are_not_invoiced():
    services, _ = service_items([service(id=1), service(id=2, name=None)], cancelling={1})
    assert [c.line.description.split(" (")[0] for c in services] == ["Service #2"]
    addons = addon_items([addon(service_id=1), addon(id=2, service_id=2)],
                         parents={2: SimpleNamespace(name="VPS", domain="")}, cancelling={1})
    assert [(c.line.description.split(" (2026")[0], c.line.attach_to) for c in addons] == [
        ("Addon: Backup (VPS)", ("service", 2))]


def test_a_domain_rides_with_the_service_of_its_name_and_uses_the_domain_window():
    window = Window(AS_OF, BillingSettings(invoice_generation_days=14, domain_invoice_generation_days=30))
    by_domain = {(7, "example.com"): ("service", 1)}
    due, later = domain(due=date(2026, 2, 9)), domain(id=2, name="other.org", due=date(2026, 2, 10))
    [candidate] = domain_items([due, later], by_domain, window)
    assert candidate.line.description == "Domain Renewal - example.com - 1 Year/s (2026-02-09 - 2027-02-08)"
    assert candidate.line.attach_to == ("service", 1)


def test_billable_items_by_invoice_action():
    window = Window(AS_OF, BillingSettings(invoice_generation_days=5))
    items = [
        billable(id=1, action=InvoiceAction.NEXT_RUN, due=date(2027, 1, 1)),   # next run: whatever its date
        billable(id=2, action=InvoiceAction.DUE_DATE, due=date(2026, 1, 15)),  # within the 5 days
        billable(id=3, action=InvoiceAction.DUE_DATE, due=date(2026, 1, 16)),  # not yet
        billable(id=4, action=InvoiceAction.NEXT_RUN, count=1),                # invoiced once already
        billable(id=5, action=InvoiceAction.RECUR, every=1, cycle="Months", count=2, recur_for=3),
        billable(id=6, action=InvoiceAction.RECUR, every=1, cycle="Months", count=3, recur_for=3),  # done
        billable(id=7, action=InvoiceAction.RECUR, every=1, cycle="Fortnights"),  # not a unit
        billable(id=8, action=InvoiceAction.NEXT_INVOICE),
    ]
    found = {c.line.item_id: c for c in billable_items(items, window)}
    assert sorted(found) == [1, 2, 5, 8]
    assert found[5].update.values == {"invoice_count": 3, "due_date": date(2026, 2, 12)}
    assert found[2].update.values == {"invoice_count": 1}
    assert found[8].line.rides_next_invoice and not found[1].line.rides_next_invoice
    # selected by an admin: no window, and nothing rides
    selected = {c.line.item_id: c for c in billable_items(items, Window(AS_OF, BillingSettings(), selected=True))}
    assert sorted(selected) == [1, 2, 3, 5, 8] and not selected[8].line.rides_next_invoice


def test_keep_unbilled_drops_billed_periods_and_a_second_period_on_one_billing_day():
    candidates, _ = service_items([service(id=1), service(id=2), service(id=3), service(id=4)], cancelling=set())
    due_on = date(2026, 1, 20)
    billed = _BilledPeriods(
        periods={("service", 1, due_on): InvoiceStatus.UNPAID,      # billed: left out
                 ("service", 2, due_on): InvoiceStatus.CANCELLED},  # its invoice cancelled: taken over
        that_day={("service", 3): date(2025, 12, 20)})               # billed another period today: left out
    due = DueThings(billed_on=AS_OF)

    keep_unbilled(candidates, billed, due)

    assert [line.item_id for line in due.items[7]] == [2, 4]
    assert due.cancelled_periods == {("service", 2, due_on)}
    assert set(due.updates) == {("service", 2), ("service", 4)}
