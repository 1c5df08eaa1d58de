"""Which lines go on which invoice, and the credit they take (SPEC §4, §8). Pure: no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import date
from decimal import Decimal

import pytest

from billingworker.domain.billing.invoice_plan import (
    ClientInfo,
    InvoicePlan,
    PlannedItem,
    TaxContext,
    apply_credit_to_plans,
    group_lines,
    plan_invoices,
    settle_if_free,
)
from billingworker.domain.billing.tax import Rate, compute_totals
from billingworker.domain.models import InvoiceStatus, ItemType

D = Decimal
TODAY = date(2026, 1, 10)
D1 = date(2026, 1, 20)
D2 = date(2026, 1, 24)
D3 = date(2026, 2, 1)
NO_TAX = TaxContext(None, None, inclusive=False, compound=False)


def service(item_id: int, due: date | None = D1, method: str = "stripe", amount: str = "10.00", **kw) -> PlannedItem:
    return PlannedItem(ItemType.SERVICE, item_id, f"Service {item_id}", D(amount), kw.pop("taxed", False), due, method,
                       **kw)


def addon(item_id: int, parent: int, due: date | None = D1, method: str = "stripe",
          amount: str = "2.00") -> PlannedItem:
    return PlannedItem(ItemType.ADDON, item_id, f"Addon {item_id}", D(amount), False, due, method,
                       attach_to=(ItemType.SERVICE, parent))


def domain(item_id: int, parent: int | None, due: date | None = D1, method: str = "stripe",
           amount: str = "15.00") -> PlannedItem:
    return PlannedItem(ItemType.DOMAIN, item_id, f"Domain {item_id}", D(amount), False, due, method,
                       attach_to=(ItemType.SERVICE, parent) if parent is not None else None)


def billable(item_id: int, due: date | None = D1, method: str = "", amount: str = "5.00",
             rides: bool = False) -> PlannedItem:
    return PlannedItem(ItemType.BILLABLE, item_id, f"Item {item_id}", D(amount), False, due, method,
                       rides_next_invoice=rides)


def keys(groups) -> list[list[tuple[str, int]]]:
    return [[ln.key for ln in g] for g in groups]


def client(credit: str = "0", **kw) -> ClientInfo:
    values = dict(id=7, email="ada@example.com", status="Active", currency_id=1, minor_units=2,
                  credit_balance=D(credit), separate_invoices=False, country="GB", state="", tax_exempt=False)
    values.update(kw)
    return ClientInfo(**values)


def plan(lines, *, credit: str = "0", auto_apply_credit: bool = True, separate: bool = False,
         tax: TaxContext = NO_TAX) -> list[InvoicePlan]:
    return plan_invoices(client(credit), lines, as_of=TODAY, tax=tax, separate=separate,
                         auto_apply_credit=auto_apply_credit)


S = ItemType.SERVICE
A = ItemType.ADDON
DOM = ItemType.DOMAIN
B = ItemType.BILLABLE


# --- grouping -----------------------------------------------------------------------------


def test_one_invoice_per_due_date_and_payment_method():
    lines = [service(1, D1, "stripe"), service(2, D1, "stripe"), service(3, D1, "paypal"),
             service(4, D2, "stripe")]
    assert keys(group_lines(lines, separate=False)) == [[(S, 3)], [(S, 1), (S, 2)], [(S, 4)]]


def test_separate_invoices_one_per_thing():
    lines = [service(1, D1), service(2, D1), domain(3, None, D1), service(4, D2)]
    assert sorted(keys(group_lines(lines, separate=True))) == [[(DOM, 3)], [(S, 1)], [(S, 2)], [(S, 4)]]


def test_an_addon_due_the_same_day_joins_its_parent_even_with_another_payment_method():
    lines = [service(1, D1, "stripe"), service(2, D1, "paypal"), addon(10, parent=1, due=D1, method="paypal")]
    assert keys(group_lines(lines, separate=False)) == [[(S, 2)], [(S, 1), (A, 10)]]


def test_an_addon_due_another_day_is_on_its_own_invoice():
    lines = [service(1, D1, "stripe"), addon(10, parent=1, due=D2, method="stripe")]
    assert keys(group_lines(lines, separate=False)) == [[(S, 1)], [(A, 10)]]


def test_an_addon_whose_parent_is_not_due_groups_by_its_own_date_and_method():
    lines = [service(2, D1, "paypal"), addon(10, parent=1, due=D1, method="paypal")]
    assert keys(group_lines(lines, separate=False)) == [[(S, 2), (A, 10)]]


def test_a_domain_due_the_same_day_joins_its_service():
    lines = [service(1, D1, "stripe"), domain(20, parent=1, due=D1, method="banktransfer"),
             domain(21, parent=None, due=D1, method="banktransfer")]
    assert keys(group_lines(lines, separate=False)) == [[(DOM, 21)], [(S, 1), (DOM, 20)]]


def test_a_domain_due_another_day_is_not_joined():
    lines = [service(1, D1, "stripe"), domain(20, parent=1, due=D2, method="stripe")]
    assert keys(group_lines(lines, separate=False)) == [[(S, 1)], [(DOM, 20)]]


def test_with_separate_invoices_an_addon_still_goes_beside_its_parent():
    lines = [service(1, D1), service(2, D1), addon(10, parent=1, due=D1), addon(11, parent=2, due=D2)]
    assert sorted(keys(group_lines(lines, separate=True))) == [[(A, 11)], [(S, 1), (A, 10)], [(S, 2)]]


def test_riders_join_the_earliest_invoice():
    lines = [service(2, D2, "stripe"), billable(30, due=D3, rides=True), service(1, D1, "paypal")]
    groups = group_lines(lines, separate=False)
    assert keys(groups) == [[(S, 1), (B, 30)], [(S, 2)]]


def test_riders_are_dropped_when_nothing_else_is_invoiced():
    assert group_lines([billable(30, rides=True), billable(31, due=None, rides=True)], separate=False) == []


def test_a_line_without_payment_method_pays_like_the_first_line_due_the_same_day():
    lines = [service(1, D1, "stripe"), service(2, D1, "paypal"), billable(30, due=D1, method=""),
             billable(31, due=D2, method="")]
    groups = group_lines(lines, separate=False)
    assert keys(groups) == [[(S, 2)], [(S, 1), (B, 30)], [(B, 31)]]
    assert [ln.payment_method for ln in groups[1]] == ["stripe", "stripe"]
    assert groups[2][0].payment_method == ""


def test_the_invoice_pays_with_the_groups_method_whatever_the_line_order():
    lines = [addon(10, parent=1, due=D1, method="paypal"), service(1, D1, "stripe"), service(2, D1, "stripe")]
    plans = plan(lines)
    assert [[ln.key for ln in p.items] for p in plans] == [[(A, 10), (S, 1), (S, 2)]]
    assert plans[0].payment_method == "stripe"


# --- planning -------------------------------------------------------------------------------


def test_plan_invoices_builds_dated_totalled_unpaid_invoices():
    tax = TaxContext(Rate("VAT", D("20")), None, inclusive=False, compound=False)
    lines = [service(1, D2, "stripe", "10.00", taxed=True), service(2, D1, "paypal", "7.50"),
             billable(30, due=D3, rides=True, amount="1.00")]
    plans = plan(lines, tax=tax)
    assert [(p.date_due, p.payment_method, p.totals.total, p.status) for p in plans] == [
        # The rider (due D3) rides on the earliest invoice without moving its due date.
        (D1, "paypal", D("8.50"), InvoiceStatus.UNPAID),
        (D2, "stripe", D("12.00"), InvoiceStatus.UNPAID),
    ]
    first = plans[0]
    assert (first.client_id, first.currency_id, first.date_created, first.credit_applied, first.date_paid) == (
        7, 1, TODAY, D("0"), None)
    assert plans[1].totals == compute_totals([(D("10.00"), True)], Rate("VAT", D("20")), None)
    assert plans[1].balance_due == D("12.00")
    assert first.billed_periods == [(S, 2, D1), (B, 30, D3)]


def test_no_lines_no_invoices():
    assert plan_invoices(client(), [], as_of=TODAY, tax=NO_TAX, separate=False, auto_apply_credit=True) == []


def test_an_undated_invoice_is_due_the_day_it_is_created():
    [p] = plan([PlannedItem(ItemType.ADD_FUNDS, None, "Add Funds", D("25.00"), False, None)])
    assert (p.date_due, p.totals.total, p.status, p.billed_periods) == (TODAY, D("25.00"), "Unpaid", [])


def test_credit_is_applied_in_due_date_order():
    # Given 30.00 of credit and two invoices, the later one listed first.
    lines = [service(2, D2, "stripe", "50.00"), service(1, D1, "stripe", "20.00")]
    plans = plan(lines, credit="30.00")
    by_due = {p.date_due: p for p in plans}
    # The earlier invoice takes all it needs and is Paid, the later one takes the rest.
    assert (by_due[D1].credit_applied, by_due[D1].status, by_due[D1].date_paid) == (
        D("20.00"), InvoiceStatus.PAID, TODAY)
    assert (by_due[D2].credit_applied, by_due[D2].status, by_due[D2].date_paid) == (
        D("10.00"), InvoiceStatus.UNPAID, None)
    assert by_due[D2].balance_due == D("40.00")


def test_credit_takes_min_of_balance_and_balance_due():
    plans = plan([service(1, D1, amount="20.00"), service(2, D2, amount="50.00")], credit="100.00")
    assert [(p.credit_applied, p.balance_due, p.status) for p in plans] == [
        (D("20.00"), D("0.00"), InvoiceStatus.PAID), (D("50.00"), D("0.00"), InvoiceStatus.PAID),
    ]
    assert sum(p.credit_applied for p in plans) == D("70.00")


def test_credit_equal_to_the_total_pays_it():
    [p] = plan([service(1, D1, amount="20.00")], credit="20.00")
    assert (p.credit_applied, p.balance_due, p.status, p.date_paid) == (D("20.00"), D("0.00"), "Paid", TODAY)


def test_credit_is_spent_once_across_invoices_and_never_goes_negative():
    plans = plan([service(i, date(2026, 1, 10 + i), amount="7.00") for i in range(1, 6)], credit="15.00")
    assert [p.credit_applied for p in plans] == [D("7.00"), D("7.00"), D("1.00"), D("0"), D("0")]
    assert [p.status for p in plans] == ["Paid", "Paid", "Unpaid", "Unpaid", "Unpaid"]


def test_auto_apply_credit_off_leaves_the_credit_alone():
    [p] = plan([service(1, D1, amount="20.00")], credit="100.00", auto_apply_credit=False)
    assert (p.credit_applied, p.balance_due, p.status, p.date_paid) == (D("0"), D("20.00"), "Unpaid", None)


@pytest.mark.parametrize("auto_apply_credit", [True, False])
def test_a_zero_total_invoice_is_paid_at_creation(auto_apply_credit):
    [p] = plan([service(1, D1, amount="0.00")], auto_apply_credit=auto_apply_credit)
    assert (p.totals.total, p.credit_applied, p.status, p.date_paid) == (D("0.00"), D("0"), "Paid", TODAY)


def test_credit_applied_is_never_negative_nor_more_than_the_balance():
    lines = [billable(30, due=D1, method="stripe", amount="-5.00"), service(1, D2, amount="20.00")]
    plans = plan(lines, credit="10.00")
    assert all(p.credit_applied >= 0 for p in plans)
    assert sum(p.credit_applied for p in plans) <= D("10.00")


def test_apply_credit_with_no_balance_only_settles_free_invoices():
    plans = plan([service(1, D1, amount="0.00"), service(2, D2, amount="5.00")], auto_apply_credit=False)
    again = apply_credit_to_plans(plans, D("0"), TODAY)
    assert [(p.credit_applied, p.status) for p in again] == [(D("0"), "Paid"), (D("0"), "Unpaid")]


def test_settle_if_free_leaves_other_statuses_alone():
    [p] = plan([service(1, D1, amount="0.00")], auto_apply_credit=False)
    draft = replace(p, status=InvoiceStatus.DRAFT, date_paid=None)
    assert settle_if_free(draft, TODAY).status == InvoiceStatus.DRAFT
    [unpaid] = plan([service(1, D1, amount="1.00")], auto_apply_credit=False)
    assert settle_if_free(unpaid, TODAY) is unpaid


