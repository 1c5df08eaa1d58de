"""Mass update (SPEC §9): the fields, the prorata invoice, all or nothing, once per request."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from functools import partial

import pytest
from sqlalchemy import func, select

from billingworker.domain.accounts.mass_update import mass_update, parse_changes
from billingworker.domain.errors import NotFound, ValidationError
from billingworker.domain.models import (
    Addon,
    Client,
    CreditHistory,
    Domain,
    Invoice,
    InvoiceItem,
    ModuleCommand,
    OutboxEmail,
    Product,
    Service,
)
from billingworker.domain.receipts import run_once
from billingworker.domain.settings import save_settings
from tests import factories as f
from tests.factories import race

DAY = date(2026, 1, 10)
NOW = datetime(2026, 1, 10, 9, tzinfo=UTC)
KEY = "mass_update:message:m-1"


def update(session, client, items, changes, *, prorata=False, key=KEY, queue_email=True):
    return mass_update(session, client.id, items, changes, create_prorata_invoice=prorata, as_of=DAY, now=NOW,
                       request_key=key, queue_email=queue_email)


def count(session, model, *where):
    return session.scalar(select(func.count()).select_from(model).where(*where))


def snapshot(session):
    """Everything a mass update may write, to compare before and after."""
    session.expire_all()
    things = [(type(t).__name__, t.id, t.status, t.payment_method, t.amount, t.billing_cycle, t.next_due_date,
               t.next_invoice_date, t.due_day, t.override_auto_suspend)
              for model in (Service, Addon, Domain) for t in session.scalars(select(model).order_by(model.id))]
    return (things, count(session, Invoice), count(session, InvoiceItem), count(session, ModuleCommand),
            count(session, OutboxEmail), count(session, CreditHistory),
            [c.credit_balance for c in session.scalars(select(Client).order_by(Client.id))])


@pytest.fixture
def hosting(session):
    """A client with a service (60.00 a month due 1 Feb), its addon and a domain."""
    c = f.client(session)
    svc = f.service(session, c, next_due_date=date(2026, 2, 1), amount=Decimal("60.00"))
    add = f.addon(session, svc, next_due_date=date(2026, 2, 1), amount=Decimal("3.00"))
    dom = f.domain(session, c, next_due_date=date(2026, 3, 1), amount=Decimal("365.00"))
    session.commit()
    return c, svc, add, dom


# --- the fields ---------------------------------------------------------------------------

def test_every_field_changes_on_every_selected_thing(session, hosting):
    c, svc, add, _ = hosting
    result = update(session, c, [("service", svc.id), ("addon", add.id)], {
        "status": "Suspended", "payment_method": "paypal", "override_auto_suspend": True,
        "recurring_amount": "12.00", "billing_cycle": "Annually", "next_due_date": "2027-01-15"})
    session.commit()
    assert result.updated == [("service", svc.id), ("addon", add.id)]
    session.expire_all()
    for thing in (session.get(Service, svc.id), session.get(Addon, add.id)):
        assert (thing.status, thing.payment_method, thing.override_auto_suspend, thing.amount,
                thing.billing_cycle) == ("Suspended", "paypal", True, Decimal("12.00"), "Annually")
        # WHMCS moves the next invoice date with it; the admin's date is the new anchor day.
        assert (thing.next_due_date, thing.next_invoice_date, thing.due_day) == (
            date(2027, 1, 15), date(2027, 1, 15), 15)
    assert result.invoice_id is None and count(session, Invoice) == 0, "no prorata asked"


def test_absent_null_and_blank_fields_are_unchanged(session, hosting):
    c, svc, _, _ = hosting
    update(session, c, [("service", svc.id)], {"status": "", "payment_method": None, "recurring_amount": " ",
                                              "billing_cycle": "Quarterly"})
    session.commit()
    session.expire_all()
    s = session.get(Service, svc.id)
    assert (s.status, s.payment_method, s.amount, s.billing_cycle, s.next_due_date) == (
        "Active", "stripe", Decimal("60.00"), "Quarterly", date(2026, 2, 1))


def test_terminating_a_service_dates_its_termination(session, hosting):
    c, svc, _, _ = hosting
    update(session, c, [("service", svc.id)], {"status": "Terminated"})
    session.commit()
    session.expire_all()
    assert session.get(Service, svc.id).termination_date == DAY


def test_domains_take_domain_statuses(session, hosting):
    c, _, _, dom = hosting
    update(session, c, [("domain", dom.id)], {"status": "Expired"})
    session.commit()
    session.expire_all()
    assert session.get(Domain, dom.id).status == "Expired"


@pytest.mark.parametrize(("changes", "field"), [
    ({"colour": "red"}, "changes.colour"),
    ({"status": "Sleeping"}, "changes.status"),
    ({"billing_cycle": "Fortnightly"}, "changes.billing_cycle"),
    ({"recurring_amount": 12.5}, "changes.recurring_amount"),
    ({"recurring_amount": "-1.00"}, "changes.recurring_amount"),
    ({"recurring_amount": "1.005"}, "changes.recurring_amount"),
    ({"next_due_date": "2026-02-30"}, "changes.next_due_date"),
    ({"next_due_date": 20260201}, "changes.next_due_date"),
    ({"override_auto_suspend": "yes"}, "changes.override_auto_suspend"),
    ({"payment_method": "x" * 51}, "changes.payment_method"),
    ({"module_command": "reboot"}, "changes.module_command"),
    ({"module_params": {"plan": "gold"}}, "changes.module_params"),
    ({}, "changes"),
    ({"status": ""}, "changes"),
])
def test_bad_changes_name_the_field(changes, field):
    with pytest.raises(ValidationError) as err:
        parse_changes(changes)
    assert err.value.field == field


def test_a_status_must_fit_each_kind_of_thing(session, hosting):
    c, svc, _, dom = hosting
    before = snapshot(session)
    with pytest.raises(ValidationError) as err:
        update(session, c, [("service", svc.id), ("domain", dom.id)], {"status": "Suspended"})
    assert err.value.field == "changes.status" and "domain" in err.value.rule
    session.rollback()
    assert snapshot(session) == before


# --- prorata --------------------------------------------------------------------------------

def test_positive_prorata_is_invoiced_to_the_cent(session, hosting):
    c, svc, _, _ = hosting
    result = update(session, c, [("service", svc.id)], {"next_due_date": "2026-02-06"}, prorata=True)
    session.commit()
    inv = session.get(Invoice, result.invoice_id)
    assert (inv.subtotal, inv.total, inv.balance_due, inv.status) == (
        Decimal("10.00"), Decimal("10.00"), Decimal("10.00"), "Unpaid")
    assert (inv.date_created, inv.date_due, inv.payment_method, inv.number) == (DAY, DAY, "stripe", 1)
    [item] = session.scalars(select(InvoiceItem).where(InvoiceItem.invoice_id == inv.id))
    assert (item.item_type, item.item_id, item.amount, item.due_date, item.period_end) == (
        "prorata", svc.id, Decimal("10.00"), date(2026, 2, 1), date(2026, 2, 5))
    assert item.description == "Prorata: Shared Hosting - example.com (2026-02-01 - 2026-02-05, 5 days)"
    [email] = session.scalars(select(OutboxEmail))
    assert (email.template, email.dedupe_key) == ("invoice_created", f"invoice_created:{inv.id}")
    assert result.email_ids == [email.id]
    session.expire_all()
    assert session.get(Service, svc.id).next_due_date == date(2026, 2, 6)


def test_prorata_lines_are_taxed_like_invoices(session, hosting):
    c, svc, add, _ = hosting
    f.tax_rule(session, rate="20")
    session.get(Addon, add.id).taxed = False
    session.commit()
    # service: 60 × 5 / 30 = 10.00 taxed; addon: 3 × 5 / 30 = 0.50 untaxed
    result = update(session, c, [("service", svc.id), ("addon", add.id)], {"next_due_date": "2026-02-06"},
                    prorata=True)
    session.commit()
    inv = session.get(Invoice, result.invoice_id)
    assert (inv.subtotal, inv.tax1, inv.total) == (Decimal("10.50"), Decimal("2.00"), Decimal("12.50"))


def test_mixed_cycles_sum_their_lines_on_one_invoice(session, hosting):
    c, svc, add, dom = hosting
    session.get(Addon, add.id).billing_cycle = "Quarterly"
    session.get(Addon, add.id).amount = Decimal("9.00")
    session.commit()
    # From each thing's own current date to 2026-03-11: service 38 days, addon 38, domain 10.
    result = update(session, c, [("service", svc.id), ("addon", add.id), ("domain", dom.id)],
                    {"next_due_date": "2026-03-11"}, prorata=True)
    session.commit()
    amounts = [ln.amount for ln in result.prorata_items]
    # 60 × 38 / 30 = 76.00 ; 9 × 38 / 90 = 3.80 ; 365 × 10 / 365 = 10.00
    assert amounts == [Decimal("76.00"), Decimal("3.80"), Decimal("10.00")]
    inv = session.get(Invoice, result.invoice_id)
    assert inv.total == Decimal("89.80") == result.prorata_total
    assert count(session, InvoiceItem, InvoiceItem.invoice_id == inv.id) == 3


def test_mixed_signs_invoice_the_positive_sum_with_every_line(session, hosting):
    c, svc, _, dom = hosting
    # service moves 15 days later (+30.00), domain 9 days earlier (-9.00)
    result = update(session, c, [("service", svc.id), ("domain", dom.id)], {"next_due_date": "2026-02-16"},
                    prorata=True)
    session.commit()
    assert [ln.amount for ln in result.prorata_items] == [Decimal("30.00"), Decimal("-13.00")]
    assert session.get(Invoice, result.invoice_id).total == Decimal("17.00")


def test_negative_prorata_makes_no_invoice_and_no_credit(session, hosting):
    c, svc, _, _ = hosting
    result = update(session, c, [("service", svc.id)], {"next_due_date": "2026-01-27"}, prorata=True)
    session.commit()
    assert result.prorata_total == Decimal("-10.00") and result.invoice_id is None
    assert count(session, Invoice) == 0 and count(session, CreditHistory) == 0 and count(session, OutboxEmail) == 0
    session.expire_all()
    assert session.get(Client, c.id).credit_balance == 0
    assert session.get(Service, svc.id).next_due_date == date(2026, 1, 27), "the change itself is kept"


def test_prorata_uses_the_amount_and_cycle_after_the_update(session, hosting):
    c, svc, _, _ = hosting
    result = update(session, c, [("service", svc.id)], {"next_due_date": "2026-02-11", "recurring_amount": "365.00",
                                                       "billing_cycle": "Annually"}, prorata=True)
    session.commit()
    assert session.get(Invoice, result.invoice_id).total == Decimal("10.00")  # 365 × 10 / 365


def test_free_and_one_time_things_have_no_prorata(session, hosting):
    c, svc, _, _ = hosting
    result = update(session, c, [("service", svc.id)], {"next_due_date": "2026-03-01", "billing_cycle": "Free"},
                    prorata=True)
    session.commit()
    assert result.prorata_items == [] and count(session, Invoice) == 0


def test_no_prorata_without_a_new_date_or_when_not_asked(session, hosting):
    c, svc, _, _ = hosting
    update(session, c, [("service", svc.id)], {"status": "Suspended"}, prorata=True, key="k1")
    update(session, c, [("service", svc.id)], {"next_due_date": "2026-03-01"}, prorata=False, key="k2")
    session.commit()
    assert count(session, Invoice) == 0


def test_credit_is_applied_to_the_prorata_invoice(session, hosting):
    c, svc, _, _ = hosting
    session.get(Client, c.id).credit_balance = Decimal("4.00")
    session.commit()
    result = update(session, c, [("service", svc.id)], {"next_due_date": "2026-02-06"}, prorata=True)
    session.commit()
    inv = session.get(Invoice, result.invoice_id)
    assert (inv.credit_applied, inv.balance_due, inv.status) == (Decimal("4.00"), Decimal("6.00"), "Unpaid")
    session.expire_all()
    assert session.get(Client, c.id).credit_balance == 0
    [entry] = session.scalars(select(CreditHistory))
    assert entry.amount == Decimal("-4.00") and entry.source == "job:mass_update"


def test_a_prorata_covered_by_credit_is_paid_and_moves_no_due_date(session, hosting):
    c, svc, _, _ = hosting
    session.get(Client, c.id).credit_balance = Decimal("50.00")
    session.commit()
    result = update(session, c, [("service", svc.id)], {"next_due_date": "2026-02-06"}, prorata=True)
    session.commit()
    inv = session.get(Invoice, result.invoice_id)
    assert (inv.status, inv.date_paid, inv.balance_due) == ("Paid", DAY, 0)
    session.expire_all()
    assert session.get(Service, svc.id).next_due_date == date(2026, 2, 6), "a prorata line bills no period"


def test_a_prorata_invoice_for_a_client_without_currency_is_refused(session, hosting):
    c, svc, _, _ = hosting
    session.get(Client, c.id).currency_id = None
    session.commit()
    with pytest.raises(ValidationError) as err:
        update(session, c, [("service", svc.id)], {"next_due_date": "2026-02-06"}, prorata=True)
    assert err.value.field == "currency_id"


# --- all or nothing -------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["other_client", "unknown_id", "bad_value", "bad_type"])
def test_one_bad_item_or_value_changes_nothing(session, hosting, case):
    c, svc, add, _ = hosting
    other = f.client(session)
    foreign = f.service(session, other, next_due_date=date(2026, 2, 1))
    session.commit()
    items = [("service", svc.id), ("addon", add.id)]
    changes = {"next_due_date": "2026-02-06", "status": "Suspended", "module_command": "suspend"}
    if case == "other_client":
        items.append(("service", foreign.id))
    elif case == "unknown_id":
        items.append(("domain", 999))
    elif case == "bad_value":
        changes["billing_cycle"] = "Weekly"
    else:
        items.append(("billable", 1))
    before = snapshot(session)
    with pytest.raises(ValidationError) as err:
        update(session, c, items, changes, prorata=True)
    if case == "other_client":
        assert err.value.field == "items[2].id" and "another client" in err.value.rule
    if case == "unknown_id":
        assert isinstance(err.value, NotFound) and err.value.field == "items[2].id"
    session.rollback()  # what the actor's unit of work does
    assert snapshot(session) == before
    assert count(session, ModuleCommand) == 0 and count(session, Invoice) == 0


def test_a_thing_named_twice_is_updated_once_and_errors_name_the_senders_index(session, hosting):
    c, svc, _, _ = hosting
    result = update(session, c, [("service", svc.id), ("service", svc.id)], {"module_command": "suspend"})
    assert result.updated == [("service", svc.id)] and count(session, ModuleCommand) == 1
    session.rollback()
    with pytest.raises(NotFound) as err:
        update(session, c, [("service", svc.id), ("service", svc.id), ("addon", 999)], {"status": "Active"})
    assert err.value.field == "items[2].id"


def test_unknown_client_is_not_found(session):
    with pytest.raises(NotFound):
        mass_update(session, 4242, [("service", 1)], {"status": "Active"}, as_of=DAY, now=NOW, request_key=KEY)


# --- module commands ----------------------------------------------------------------------

def test_module_command_queued_once_per_thing_keyed_by_the_request(session, hosting):
    c, svc, add, dom = hosting
    result = update(session, c, [("service", svc.id), ("addon", add.id), ("domain", dom.id)],
                    {"module_command": "change_package", "module_params": {"package": "gold"}})
    session.commit()
    rows = session.scalars(select(ModuleCommand).order_by(ModuleCommand.id)).all()
    assert [(r.item_type, r.item_id, r.command, r.status, r.client_id) for r in rows] == [
        ("service", svc.id, "change_package", "queued", c.id), ("addon", add.id, "change_package", "queued", c.id),
        ("domain", dom.id, "change_package", "queued", c.id)]
    assert [r.request_key for r in rows] == [f"{KEY}:service:{svc.id}", f"{KEY}:addon:{add.id}",
                                             f"{KEY}:domain:{dom.id}"]
    assert rows[0].params == '{"package": "gold"}'
    assert [q.command_id for q in result.commands] == [r.id for r in rows]


def test_the_same_request_twice_queues_nothing_more_and_invoices_once(session, hosting):
    c, svc, _, _ = hosting
    changes = {"next_due_date": "2026-02-06", "module_command": "suspend"}
    first = update(session, c, [("service", svc.id)], changes, prorata=True)
    session.commit()
    before = snapshot(session)
    again = update(session, c, [("service", svc.id)], changes, prorata=True)
    session.commit()
    assert snapshot(session) == before
    assert again.invoice_id is None and again.prorata_items == [], "the date no longer moves"
    assert [q.command_id for q in again.commands] == [q.command_id for q in first.commands]


def test_another_request_is_another_command_but_no_second_invoice(session, hosting):
    c, svc, _, _ = hosting
    changes = {"next_due_date": "2026-02-06", "module_command": "suspend"}
    update(session, c, [("service", svc.id)], changes, prorata=True, key="mass_update:message:a")
    update(session, c, [("service", svc.id)], changes, prorata=True, key="mass_update:message:b")
    session.commit()
    assert count(session, Invoice) == 1 and count(session, ModuleCommand) == 2


def test_service_labels_use_the_product_name(session):
    c = f.client(session)
    product = Product(name="VPS Large")
    session.add(product)
    session.flush()
    svc = f.service(session, c, next_due_date=date(2026, 2, 1), product_id=product.id, domain="")
    session.commit()
    result = update(session, c, [("service", svc.id)], {"next_due_date": "2026-02-02"}, prorata=True)
    assert result.prorata_items[0].description.startswith("Prorata: VPS Large (2026-02-01 - 2026-02-01")


# --- two workers at once (PostgreSQL) -------------------------------------------------------

def _run_job(client_id, items, changes, key, session):
    """What the actor does: a receipt per request, then the update."""
    return run_once(session, key, "mass_update", lambda: mass_update(
        session, client_id, items, changes, create_prorata_invoice=True, as_of=DAY, now=NOW,
        request_key=key).summary())


def test_the_same_message_twice_at_once_has_the_effect_of_once(pg_engine, pg_session):
    s = pg_session
    c = f.client(s)
    svc = f.service(s, c, next_due_date=date(2026, 2, 1), amount=Decimal("60.00"))
    dom = f.domain(s, c, next_due_date=date(2026, 2, 1), amount=Decimal("365.00"))
    s.commit()
    items = [("service", svc.id), ("domain", dom.id)]
    changes = {"next_due_date": "2026-02-06", "module_command": "suspend", "status": "Cancelled"}
    job = partial(_run_job, c.id, items, changes, KEY)
    results = race(pg_engine, job, job)
    assert sorted(done for _, done in results) == [False, True]
    s.rollback()
    assert count(s, Invoice) == 1 and count(s, OutboxEmail) == 1 and count(s, ModuleCommand) == 2
    assert s.scalar(select(Invoice.total)) == Decimal("15.00")  # 10.00 + 365 × 5 / 365


def test_two_different_messages_at_once_invoice_the_prorata_once(pg_engine, pg_session):
    s = pg_session
    c = f.client(s)
    svc = f.service(s, c, next_due_date=date(2026, 2, 1), amount=Decimal("60.00"))
    s.commit()
    changes = {"next_due_date": "2026-02-06"}
    race(pg_engine, *[partial(_run_job, c.id, [("service", svc.id)], changes, f"mass_update:message:{n}")
                      for n in range(3)])
    s.rollback()
    assert count(s, Invoice) == 1 and count(s, OutboxEmail) == 1
    assert s.scalar(select(Invoice.total)) == Decimal("10.00")
    s.expire_all()
    assert s.get(Service, svc.id).next_due_date == date(2026, 2, 6)


def test_auto_apply_credit_off_leaves_the_balance(session, hosting):
    c, svc, _, _ = hosting
    save_settings(session, auto_apply_credit=False)
    session.get(Client, c.id).credit_balance = Decimal("4.00")
    session.commit()
    result = update(session, c, [("service", svc.id)], {"next_due_date": "2026-02-06"}, prorata=True)
    session.commit()
    assert session.get(Invoice, result.invoice_id).credit_applied == 0


def test_the_domain_function_takes_the_jobs_item_objects_and_a_date(session, hosting):
    # What docs/jobs.md shows ({"type", "id"} objects) and a Python date are as good as pairs
    # and an ISO string: a caller of the domain function gets the same invoice.
    c, svc, _, dom = hosting
    result = update(session, c, [{"type": "service", "id": svc.id}, {"type": "domain", "id": str(dom.id)}],
                    {"next_due_date": date(2026, 3, 6)}, prorata=True)
    session.commit()
    # service: 60.00 x 33 days / 30 = 66.00; domain: 365.00 x 5 days / 365 = 5.00
    assert result.prorata_total == Decimal("71.00")
    session.expire_all()
    assert (session.get(Service, svc.id).next_due_date, session.get(Domain, dom.id).next_due_date) == (
        date(2026, 3, 6), date(2026, 3, 6))


@pytest.mark.parametrize(("items", "field"), [([{"type": "service"}], "items[0]"), (["service"], "items[0]"),
                                              ([{"type": "service", "id": "x"}], "items[0].id"),
                                              ([("service", 0)], "items[0].id"), ("service:1", "items")])
def test_a_malformed_item_is_named(session, hosting, items, field):
    c = hosting[0]
    with pytest.raises(ValidationError) as err:
        update(session, c, items, {"status": "Active"})
    assert err.value.field == field
