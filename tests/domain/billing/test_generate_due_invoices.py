"""Generate due invoices (SPEC §4), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from sqlalchemy import func, select

from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.models import (
    BilledPeriod,
    CancelRequest,
    Client,
    Invoice,
    InvoiceItem,
    InvoiceStatus,
    JobFailure,
    OutboxEmail,
    Service,
)
from billingworker.domain.settings import save_settings
from tests import factories as f

TODAY = date(2026, 1, 10)


def run(session, *clients, as_of=TODAY, **kw):
    result = generate_for_clients(session, [c.id for c in clients], as_of, **kw)
    session.commit()
    return result


def invoices(session, client=None):
    q = select(Invoice).order_by(Invoice.id)
    if client is not None:
        q = q.where(Invoice.client_id == client.id)
    return list(session.execute(q).scalars())


def items(session, invoice):
    return list(session.execute(select(InvoiceItem).where(InvoiceItem.invoice_id == invoice.id)
                                .order_by(InvoiceItem.id)).scalars())


def test_a_service_due_within_the_window_is_invoiced_once(session):
    # Given a monthly service due in 14 days (the default window)
    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2026, 1, 24), amount=Decimal("12.50"))
    session.commit()
    # When the day's run happens twice
    first = run(session, c)
    second = run(session, c)
    # Then one invoice bills it for that due date, numbered 1, and one email is queued
    [inv] = invoices(session)
    assert (first.invoices_created, second.invoices_created) == (1, 0)
    assert inv.number == 1 and inv.status == InvoiceStatus.UNPAID
    assert inv.date_due == date(2026, 1, 24) and inv.date_created == TODAY
    assert inv.total == Decimal("12.50") and inv.balance_due == Decimal("12.50")
    [item] = items(session, inv)
    assert (item.item_type, item.item_id, item.due_date) == ("service", s.id, date(2026, 1, 24))
    assert "2026-01-24 - 2026-02-23" in item.description
    session.refresh(s)
    assert s.next_invoice_date == date(2026, 2, 24)
    assert s.next_due_date == date(2026, 1, 24), "next_due_date moves only when paid"
    assert session.scalar(select(func.count()).select_from(OutboxEmail)) == 1


def test_a_service_outside_the_window_waits(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 25))  # 15 days away
    session.commit()
    assert run(session, c).invoices_created == 0
    assert run(session, c, as_of=date(2026, 1, 11)).invoices_created == 1


def test_per_cycle_and_domain_windows(session):
    save_settings(session, invoice_generation_days_by_cycle={"Annually": 30}, domain_invoice_generation_days=60)
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 2, 5), billing_cycle="Annually", domain="a.com")
    f.service(session, c, next_due_date=date(2026, 2, 5), billing_cycle="Monthly", domain="b.com")
    f.domain(session, c, next_due_date=date(2026, 3, 5), domain="c.com")
    session.commit()
    run(session, c)
    billed = session.execute(select(InvoiceItem.description)).scalars().all()
    assert len(billed) == 2
    assert any("a.com" in d for d in billed) and any("c.com" in d for d in billed)


def test_free_and_one_time_are_never_invoiced(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 12), billing_cycle="Free")
    f.service(session, c, next_due_date=date(2026, 1, 12), billing_cycle="One Time")
    session.commit()
    assert run(session, c).invoices_created == 0


def test_only_invoiceable_statuses_and_no_pending_cancellation(session):
    c = f.client(session)
    for status in ("Active", "Pending", "Suspended", "Terminated", "Cancelled", "Fraud"):
        f.service(session, c, next_due_date=date(2026, 1, 12), status=status, domain=f"{status.lower()}.com")
    cancelling = f.service(session, c, next_due_date=date(2026, 1, 12), domain="leaving.com")
    session.add(CancelRequest(service_id=cancelling.id, type="End of Billing Period"))
    session.commit()
    run(session, c)
    billed = session.execute(select(InvoiceItem.description)).scalars().all()
    assert sorted(d.split(" - ")[1].split(" ")[0] for d in billed) == ["active.com", "pending.com", "suspended.com"]


def test_grouped_by_due_date_and_payment_method(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 15), payment_method="stripe", domain="a.com")
    f.service(session, c, next_due_date=date(2026, 1, 15), payment_method="stripe", domain="b.com")
    f.service(session, c, next_due_date=date(2026, 1, 15), payment_method="paypal", domain="c.com")
    f.service(session, c, next_due_date=date(2026, 1, 20), payment_method="stripe", domain="d.com")
    session.commit()
    run(session, c)
    shape = sorted((i.date_due, i.payment_method, len(items(session, i))) for i in invoices(session))
    assert shape == [(date(2026, 1, 15), "paypal", 1), (date(2026, 1, 15), "stripe", 2),
                     (date(2026, 1, 20), "stripe", 1)]
    assert sorted(i.number for i in invoices(session)) == [1, 2, 3]


def test_separate_invoices_one_per_thing_addons_stay_with_their_parent(session):
    c = f.client(session, separate_invoices=True)
    s1 = f.service(session, c, next_due_date=date(2026, 1, 15), domain="a.com")
    f.service(session, c, next_due_date=date(2026, 1, 15), domain="b.com")
    f.addon(session, s1, next_due_date=date(2026, 1, 15))
    session.commit()
    run(session, c)
    assert sorted(len(items(session, i)) for i in invoices(session)) == [1, 2]


def test_client_group_can_ask_for_separate_invoices(session):
    g = f.group(session, separate_invoices=True)
    c = f.client(session, group_id=g.id)
    f.service(session, c, next_due_date=date(2026, 1, 15), domain="a.com")
    f.service(session, c, next_due_date=date(2026, 1, 15), domain="b.com")
    session.commit()
    run(session, c)
    assert len(invoices(session)) == 2


def test_addons_and_domains_are_billed_beside_their_parent(session):
    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2026, 1, 15), payment_method="stripe", domain="site.com")
    f.addon(session, s, next_due_date=date(2026, 1, 15), payment_method="paypal")
    f.domain(session, c, next_due_date=date(2026, 1, 15), domain="site.com", payment_method="paypal")
    f.addon(session, s, next_due_date=date(2026, 1, 18), name="Later addon")
    session.commit()
    run(session, c)
    shape = sorted(sorted(it.item_type for it in items(session, i)) for i in invoices(session))
    assert shape == [["addon"], ["addon", "domain", "service"]]


def test_month_end_due_dates_keep_their_anchor_day(session):
    # 31 Jan monthly -> 28 Feb -> 31 Mar (SPEC §3), through invoicing and payment
    from billingworker.domain.payments.payments import settle_paid_invoices

    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2026, 1, 31), due_day=None)
    session.commit()
    dues = []
    for as_of in (date(2026, 1, 20), date(2026, 2, 20), date(2026, 3, 20)):
        result = run(session, c, as_of=as_of)
        [inv_id] = result.invoice_ids
        inv = session.get(Invoice, inv_id)
        dues.append(inv.date_due)
        inv.status, inv.balance_due, inv.date_paid = InvoiceStatus.PAID, Decimal(0), as_of
        session.flush()
        settle_paid_invoices(session, [inv_id])
        session.commit()
    assert dues == [date(2026, 1, 31), date(2026, 2, 28), date(2026, 3, 31)]
    session.refresh(s)
    assert s.next_due_date == date(2026, 4, 30)


def test_continuous_off_no_second_invoice_while_the_first_is_unpaid(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 15))
    session.commit()
    run(session, c, as_of=date(2026, 1, 10))
    # A month later the next period is in the window, but the first invoice is unpaid
    assert run(session, c, as_of=date(2026, 2, 10)).invoices_created == 0
    assert len(invoices(session)) == 1


def test_continuous_on_one_period_per_run(session):
    save_settings(session, continuous_invoice_generation=True)
    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2025, 10, 15))  # three periods behind
    session.commit()
    run(session, c, as_of=date(2026, 1, 10))
    assert [i.date_due for i in invoices(session)] == [date(2025, 10, 15)]
    run(session, c, as_of=date(2026, 1, 11))
    run(session, c, as_of=date(2026, 1, 11))  # the same day again adds nothing
    assert [i.date_due for i in invoices(session)] == [date(2025, 10, 15), date(2025, 11, 15)]
    session.refresh(s)
    assert s.next_invoice_date == date(2025, 12, 15) and s.next_due_date == date(2025, 10, 15)


def test_a_cancelled_invoice_frees_its_due_date(session):
    c = f.client(session)
    s = f.service(session, c, next_due_date=date(2026, 1, 15))
    session.commit()
    [first] = run(session, c).invoice_ids
    session.get(Invoice, first).status = InvoiceStatus.CANCELLED
    session.get(Service, s.id).next_invoice_date = date(2026, 1, 15)
    session.commit()
    [second] = run(session, c).invoice_ids
    claim = session.get(BilledPeriod, ("service", s.id, date(2026, 1, 15)))
    assert claim.invoice_id == second != first
    assert [i.number for i in invoices(session)] == [1, 2]


def test_credit_is_applied_and_a_covered_invoice_is_paid(session):
    c = f.client(session, credit_balance=Decimal("30.00"))
    s1 = f.service(session, c, next_due_date=date(2026, 1, 12), amount=Decimal("20.00"), payment_method="a")
    f.service(session, c, next_due_date=date(2026, 1, 13), amount=Decimal("25.00"), payment_method="a")
    session.commit()
    run(session, c)
    first, second = invoices(session)
    assert (first.credit_applied, first.balance_due, first.status) == (Decimal(20), Decimal(0), "Paid")
    assert (second.credit_applied, second.balance_due, second.status) == (Decimal(10), Decimal(15), "Unpaid")
    session.refresh(c)
    assert c.credit_balance == Decimal(0)
    session.refresh(s1)
    assert s1.next_due_date == date(2026, 2, 12), "paid by credit advances the due date"


def test_credit_not_applied_when_setting_is_off(session):
    save_settings(session, auto_apply_credit=False)
    c = f.client(session, credit_balance=Decimal("30.00"))
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    run(session, c)
    [inv] = invoices(session)
    assert inv.credit_applied == 0 and inv.status == "Unpaid"


def test_tax_exclusive_two_levels_and_exempt(session):
    f.tax_rule(session, level=1, rate="20", country="GB", name="VAT")
    f.tax_rule(session, level=2, rate="5", country="GB", name="Eco")
    payer = f.client(session, country="GB")
    exempt = f.client(session, country="GB", tax_exempt=True)
    for c in (payer, exempt):
        f.service(session, c, next_due_date=date(2026, 1, 12), amount=Decimal("10.00"))
        f.service(session, c, next_due_date=date(2026, 1, 12), amount=Decimal("5.55"), taxed=False, domain="x.com")
    session.commit()
    run(session, payer, exempt)
    taxed, free = invoices(session, payer)[0], invoices(session, exempt)[0]
    assert (taxed.subtotal, taxed.tax1, taxed.tax2, taxed.total) == (
        Decimal("15.55"), Decimal("2.00"), Decimal("0.50"), Decimal("18.05"))
    assert (taxed.tax_name1, taxed.tax_rate1) == ("VAT", Decimal(20))
    assert (free.tax1, free.tax2, free.total) == (0, 0, Decimal("15.55"))


def test_tax_compound_and_inclusive(session):
    save_settings(session, tax_l2_compound=True)
    f.tax_rule(session, level=1, rate="10", country="CA", name="GST")
    f.tax_rule(session, level=2, rate="10", country="CA", name="PST")
    c = f.client(session, country="CA")
    f.service(session, c, next_due_date=date(2026, 1, 12), amount=Decimal("100.00"))
    session.commit()
    run(session, c)
    [inv] = invoices(session)
    assert (inv.tax1, inv.tax2, inv.total) == (Decimal("10.00"), Decimal("11.00"), Decimal("121.00"))

    save_settings(session, tax_l2_compound=False, tax_type="inclusive")
    c2 = f.client(session, country="CA")
    f.service(session, c2, next_due_date=date(2026, 1, 12), amount=Decimal("120.00"))
    session.commit()
    run(session, c2)
    [inv2] = invoices(session, c2)
    assert (inv2.subtotal, inv2.tax1, inv2.tax2, inv2.total) == (
        Decimal("100.00"), Decimal("10.00"), Decimal("10.00"), Decimal("120.00"))


def test_state_rule_wins_over_country_rule(session):
    f.tax_rule(session, level=1, rate="5", country="US", name="Federal-ish")
    f.tax_rule(session, level=1, rate="8.25", country="US", state="TX", name="TX Sales Tax")
    c = f.client(session, country="US", state="TX")
    f.service(session, c, next_due_date=date(2026, 1, 12), amount=Decimal("10.00"))
    session.commit()
    run(session, c)
    [inv] = invoices(session)
    assert (inv.tax_name1, inv.tax1) == ("TX Sales Tax", Decimal("0.83"))


def test_a_client_without_currency_is_recorded_and_does_not_stop_the_others(session):
    broken = f.client(session)
    session.flush()
    broken.currency_id = None
    fine = f.client(session)
    f.service(session, broken, next_due_date=date(2026, 1, 12))
    f.service(session, fine, next_due_date=date(2026, 1, 12))
    session.commit()
    result = run(session, broken, fine)
    assert result.invoices_created == 1
    [failure] = result.failures
    assert failure.client_id == broken.id and failure.field == "currency_id"
    assert invoices(session, broken) == []


def test_closed_clients_are_not_invoiced(session):
    c = f.client(session, status="Closed")
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    assert run(session, c).invoices_created == 0


def test_queue_email_false_queues_nothing(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    assert run(session, c, queue_email=False).emails_queued == 0
    assert session.scalar(select(func.count()).select_from(OutboxEmail)) == 0


def test_dry_run_plans_but_writes_nothing(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    result = generate_for_clients(session, [c.id], TODAY, dry_run=True)
    session.commit()
    assert len(result.plans) == 1 and result.invoices_created == 0
    assert invoices(session) == []


def test_billable_items_follow_their_invoice_action(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 15), domain="a.com")
    f.billable(session, c, due_date=date(2026, 3, 1), invoice_action="dont_invoice", description="never")
    f.billable(session, c, due_date=date(2026, 3, 1), invoice_action="next_run", description="now")
    f.billable(session, c, due_date=date(2026, 3, 1), invoice_action="next_invoice", description="rider")
    f.billable(session, c, due_date=date(2026, 1, 15), invoice_action="due_date", description="due")
    f.billable(session, c, due_date=date(2026, 3, 1), invoice_action="due_date", description="later")
    rec = f.billable(session, c, due_date=date(2026, 1, 12), invoice_action="recur", description="monthly fee",
                     recur_every=1, recur_cycle="Months", recur_for=2)
    session.commit()
    run(session, c)
    billed = sorted(session.execute(select(InvoiceItem.description)).scalars())
    assert [b for b in billed if " - " not in b] == ["due", "monthly fee", "now", "rider"]
    session.refresh(rec)
    assert (rec.invoice_count, rec.due_date) == (1, date(2026, 2, 12))
    # Nothing billed twice on the next run; the recurring one comes back once more, then stops
    run(session, c, as_of=date(2026, 1, 11))
    run(session, c, as_of=date(2026, 2, 1))
    run(session, c, as_of=date(2026, 3, 1))
    billed = list(session.execute(select(InvoiceItem.description).where(InvoiceItem.item_type == "billable"))
                  .scalars())
    assert sorted(billed) == ["due", "later", "monthly fee", "monthly fee", "now", "rider"]


def test_failures_are_visible_to_operators_when_recorded(session):
    from datetime import UTC, datetime

    from billingworker.domain.failures import record_failures

    c = f.client(session)
    session.flush()
    c.currency_id = None
    session.commit()
    result = generate_for_clients(session, [c.id], TODAY)
    record_failures(session, result.failures, actor="generate_due_invoices", message_id="m1",
                    now=datetime(2026, 1, 10, tzinfo=UTC))
    session.commit()
    row = session.execute(select(JobFailure)).scalar_one()
    assert row.client_id == c.id and "currency" in row.reason


def test_locks_and_session_state_do_not_leak(session):
    c = f.client(session)
    f.service(session, c, next_due_date=date(2026, 1, 12))
    session.commit()
    run(session, c)
    assert session.get(Client, c.id).credit_balance == 0


def test_a_claim_written_by_another_application_costs_only_that_client(session):
    """The batch write clashes on billed_periods (another app billed a thing meanwhile): the batch
    is redone client by client and only the clashing client is affected."""
    from unittest import mock

    from billingworker.domain.billing import due_invoices

    clash = f.client(session)
    fine = f.client(session)
    s1 = f.service(session, clash, next_due_date=date(2026, 1, 12))
    f.service(session, fine, next_due_date=date(2026, 1, 12))
    session.commit()
    real = due_invoices.find_due
    calls = []

    def stale_first(*args, **kwargs):
        # The first look misses a claim that another application commits just after it.
        calls.append(1)
        due = real(*args, **kwargs)
        if len(calls) == 1:
            other = Invoice(client_id=clash.id, currency_id=clash.currency_id, status="Unpaid", number=None,
                            date_created=TODAY, date_due=date(2026, 1, 12))
            session.add(other)
            session.flush()
            session.add(BilledPeriod(item_type="service", item_id=s1.id, due_date=date(2026, 1, 12),
                                     invoice_id=other.id))
            session.flush()
        return due

    with mock.patch.object(due_invoices, "find_due", stale_first):
        result = generate_for_clients(session, [clash.id, fine.id], TODAY)
    session.commit()
    assert result.invoices_created == 1
    assert [i.client_id for i in invoices(session) if i.number is not None] == [fine.id]
    assert session.get(BilledPeriod, ("service", s1.id, date(2026, 1, 12))).invoice_id != result.invoice_ids[0]
