"""Delete selected items (SPEC §9): records only, what hangs off them, never another client's."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import partial

import pytest
from sqlalchemy import func, select

from billingworker.adapters.server_module import RECORDING_MODULE
from billingworker.domain.billing.due_invoices import generate_for_clients
from billingworker.domain.billing.thing_removal import delete_selected_items
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import (
    Addon,
    BillableItem,
    BilledPeriod,
    CancelRequest,
    Domain,
    Invoice,
    InvoiceItem,
    ModuleCommand,
    Service,
)
from tests import factories as f
from tests.factories import race

DAY = date(2026, 1, 10)


@pytest.fixture(autouse=True)
def _fresh_recording_module():
    RECORDING_MODULE.__init__()
    yield


def count(session, model, *where):
    return session.scalar(select(func.count()).select_from(model).where(*where))


@pytest.fixture
def things(session):
    c = f.client(session)
    svc = f.service(session, c, next_due_date=date(2026, 1, 12))
    addon = f.addon(session, svc, next_due_date=date(2026, 1, 12))
    dom = f.domain(session, c, next_due_date=date(2026, 1, 12))
    item = f.billable(session, c, due_date=date(2026, 1, 12))
    keep = f.service(session, c, next_due_date=date(2026, 1, 12), domain="keep.example")
    session.commit()
    return c, svc, addon, dom, item, keep


def test_the_records_go_with_what_hangs_off_them_and_history_stays(session, things):
    c, svc, addon, dom, item, keep = things
    generate_for_clients(session, [c.id], DAY)
    session.add(CancelRequest(service_id=svc.id, type="Immediate"))
    session.commit()
    items_before = count(session, InvoiceItem)
    assert items_before == 5 and count(session, BilledPeriod) == 5

    result = delete_selected_items(session, c.id, [("service", svc.id), ("domain", dom.id), ("billable", item.id)])
    session.commit()
    assert result.deleted == [("service", svc.id), ("domain", dom.id), ("billable", item.id)]
    assert result.addons_with_services == [addon.id] and result.already_gone == []
    session.expire_all()
    assert session.get(Service, svc.id) is None and session.get(Addon, addon.id) is None
    assert session.get(Domain, dom.id) is None and session.get(BillableItem, item.id) is None
    assert count(session, CancelRequest) == 0
    assert session.get(Service, keep.id) is not None, "what was not selected stays"
    # Invoices keep their lines (billing history); only the kept service's claim remains.
    assert count(session, Invoice) == 1 and count(session, InvoiceItem) == items_before
    assert session.execute(select(BilledPeriod.item_type, BilledPeriod.item_id)).all() == [("service", keep.id)]


def test_no_module_command_runs_or_is_queued(session, things):
    c, svc, addon, *_ = things
    delete_selected_items(session, c.id, [("service", svc.id), ("addon", addon.id)])
    session.commit()
    assert count(session, ModuleCommand) == 0 and RECORDING_MODULE.calls == 0


def test_a_second_run_finds_them_gone_and_succeeds(session, things):
    c, svc, addon, dom, *_ = things
    delete_selected_items(session, c.id, [("service", svc.id), ("domain", dom.id)])
    session.commit()
    again = delete_selected_items(session, c.id, [("service", svc.id), ("domain", dom.id), ("addon", addon.id)])
    session.commit()
    assert again.deleted == [] and again.already_gone == [("service", svc.id), ("domain", dom.id),
                                                          ("addon", addon.id)]


def test_an_item_of_another_client_deletes_nothing(session, things):
    c, svc, _, dom, item, _ = things
    other = f.client(session)
    foreign = f.domain(session, other, next_due_date=date(2026, 1, 12))
    session.commit()
    before = (count(session, Service), count(session, Addon), count(session, Domain), count(session, BillableItem))
    with pytest.raises(ValidationError) as err:
        delete_selected_items(session, c.id, [("service", svc.id), ("billable", item.id), ("domain", foreign.id)])
    assert err.value.field == "items[2].id" and "another client" in err.value.rule
    session.rollback()
    assert (count(session, Service), count(session, Addon), count(session, Domain),
            count(session, BillableItem)) == before


def test_unknown_client_and_unknown_type_are_refused(session, things):
    with pytest.raises(ValidationError) as err:
        delete_selected_items(session, 4242, [("service", 1)])
    assert err.value.field == "client_id"
    c = things[0]
    with pytest.raises(ValidationError) as err:
        delete_selected_items(session, c.id, [("invoice", 1)])
    assert err.value.field == "items[0].type"


def test_an_addon_alone_leaves_its_service(session, things):
    c, svc, addon, *_ = things
    delete_selected_items(session, c.id, [("addon", addon.id)])
    session.commit()
    session.expire_all()
    assert session.get(Addon, addon.id) is None and session.get(Service, svc.id) is not None


def test_two_workers_deleting_at_once_end_in_the_same_state(pg_engine, pg_session):
    s = pg_session
    c = f.client(s)
    svc = f.service(s, c, next_due_date=date(2026, 1, 12), amount=Decimal("10.00"))
    f.addon(s, svc, next_due_date=date(2026, 1, 12))
    dom = f.domain(s, c, next_due_date=date(2026, 1, 12))
    s.commit()
    go = partial(lambda session: delete_selected_items(session, c.id, [("service", svc.id), ("domain", dom.id)]))
    results = race(pg_engine, go, go)
    assert sorted(len(r.deleted) for r in results) == [0, 2]
    s.rollback()
    assert count(s, Service) == 0 and count(s, Addon) == 0 and count(s, Domain) == 0


def test_the_domain_function_takes_the_jobs_item_objects(session, things):
    c, svc, addon, dom, item, keep = things
    result = delete_selected_items(session, c.id, [{"type": "domain", "id": dom.id}, {"type": "billable",
                                                                                      "id": item.id}])
    session.commit()
    assert result.deleted == [("domain", dom.id), ("billable", item.id)]
    assert session.get(Service, keep.id) is not None
