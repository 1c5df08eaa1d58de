"""Installation settings (SPEC §2): defaults, the JSON round trip on SQLite and PostgreSQL, validation."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from billingworker.db import session_factory
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import Setting
from billingworker.domain.settings import BillingSettings, load_settings, save_settings, settings_from_mapping

D = Decimal


# --- defaults (SPEC §2 table) ---------------------------------------------------------------


def test_defaults_match_the_spec_table():
    s = BillingSettings()
    assert s.invoice_generation_days == 14
    assert s.invoiceable_statuses == ("Active", "Pending", "Suspended")
    assert s.continuous_invoiceable_statuses == ("Active", "Suspended")
    assert s.invoice_generation_days_by_cycle == {}
    assert s.domain_invoice_generation_days is None  # "same as above"
    assert s.continuous_invoice_generation is False
    assert s.auto_apply_credit is True
    assert s.unpaid_reminder_days == 7
    assert (s.first_overdue_reminder_days, s.second_overdue_reminder_days, s.third_overdue_reminder_days) == (
        1, 8, 15)
    assert s.late_fee_days == 0
    assert s.late_fee_type == "percentage"
    assert (s.late_fee_amount, s.late_fee_minimum) == (D("0"), D("0"))
    assert s.late_fee_taxed is False
    assert (s.card_capture_days_before_due, s.card_capture_retry_weeks, s.card_capture_attempt_once) == (
        0, 0, False)
    assert s.daily_run_time == "09:00"
    assert (s.add_funds_minimum, s.add_funds_maximum, s.add_funds_maximum_balance) == (D("10"), D("100"), D("300"))
    assert s.phone_number_formatting is True
    assert s.password_reset_validity_hours == 2
    assert s.tax_type == "exclusive"
    assert s.tax_l2_compound is False


def test_an_empty_table_means_the_defaults(session):
    assert load_settings(session) == BillingSettings()


def test_statuses_for_services_follow_continuous_generation():
    assert BillingSettings().statuses_for_services() == ("Active", "Pending", "Suspended")
    assert BillingSettings(continuous_invoice_generation=True).statuses_for_services() == ("Active", "Suspended")


# --- generation days ------------------------------------------------------------------------


def test_generation_days_per_cycle_override():
    s = BillingSettings(invoice_generation_days=10, invoice_generation_days_by_cycle={"Annually": 30, "Monthly": 5})
    assert s.generation_days("Annually") == 30
    assert s.generation_days("Monthly") == 5
    assert s.generation_days("Quarterly") == 10


def test_domain_generation_days():
    same = BillingSettings(invoice_generation_days=10, invoice_generation_days_by_cycle={"Annually": 30})
    # Not set: domains follow the services' rule, per-cycle override included.
    assert same.generation_days("Annually", domain=True) == 30
    assert same.generation_days("Biennially", domain=True) == 10
    own = BillingSettings(invoice_generation_days=10, invoice_generation_days_by_cycle={"Annually": 30},
                          domain_invoice_generation_days=45)
    assert own.generation_days("Annually", domain=True) == 45
    assert own.generation_days("Biennially", domain=True) == 45
    assert own.generation_days("Annually") == 30  # services are unaffected
    assert BillingSettings(domain_invoice_generation_days=0).generation_days("Annually", domain=True) == 0


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({}, 14),
        ({"invoice_generation_days_by_cycle": {"Monthly": 3}}, 14),
        ({"invoice_generation_days_by_cycle": {"Monthly": 3, "Annually": 30}}, 30),
        ({"domain_invoice_generation_days": 45}, 45),
        ({"domain_invoice_generation_days": 2, "invoice_generation_days": 21}, 21),
    ],
)
def test_max_generation_days(values, expected):
    assert BillingSettings(**values).max_generation_days() == expected


# --- round trip through the settings table ----------------------------------------------------


ALL_KINDS = dict(
    invoice_generation_days=21,
    invoice_generation_days_by_cycle={"Annually": 30, "Monthly": 3},
    domain_invoice_generation_days=45,
    invoiceable_statuses=("Active", "Suspended"),
    continuous_invoice_generation=True,
    auto_apply_credit=False,
    unpaid_reminder_days=0,
    third_overdue_reminder_days=30,
    late_fee_type="fixed",
    late_fee_amount=D("12.50"),
    late_fee_minimum=D("2.00"),
    daily_run_time="06:30",
    add_funds_maximum=D("250.00"),
    phone_number_formatting=False,
    password_reset_validity_hours=6,
    company_name="Hôtes & Co",
)


def test_save_and_load_round_trip(engine, session):
    # Given every kind of value saved and committed
    save_settings(session, **ALL_KINDS)
    session.commit()
    # When a fresh session reads them back
    with session_factory(engine)() as fresh:
        loaded = load_settings(fresh)
    # Then each value has its type and value back, the others keep their defaults
    assert loaded == BillingSettings(**ALL_KINDS)
    assert isinstance(loaded.late_fee_amount, Decimal) and str(loaded.late_fee_amount) == "12.50"
    assert loaded.invoiceable_statuses == ("Active", "Suspended")
    assert loaded.second_overdue_reminder_days == 8


def test_money_is_stored_as_a_json_string(session):
    save_settings(session, late_fee_amount=D("12.50"), invoiceable_statuses=("Active",), auto_apply_credit=False)
    stored = dict(session.execute(select(Setting.name, Setting.value)).all())
    assert stored == {"late_fee_amount": '"12.50"', "invoiceable_statuses": '["Active"]', "auto_apply_credit": "false"}


def test_saving_again_overwrites(engine, session):
    save_settings(session, invoice_generation_days=21)
    session.commit()
    save_settings(session, invoice_generation_days=3, domain_invoice_generation_days=None)
    session.commit()
    with session_factory(engine)() as fresh:
        loaded = load_settings(fresh)
        assert fresh.scalar(select(Setting.value).where(Setting.name == "invoice_generation_days")) == "3"
    assert (loaded.invoice_generation_days, loaded.domain_invoice_generation_days) == (3, None)


def test_rows_of_other_applications_are_ignored(session):
    session.add_all([Setting(name="SomeOtherAppSetting", value="{not json"),
                     Setting(name="invoice_generation_days", value="9")])
    session.flush()
    assert load_settings(session).invoice_generation_days == 9


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("invoice_generation_days", "{not json"),
        ("late_fee_amount", "12.50 USD"),
        ("invoiceable_statuses", "[Active]"),
        ("auto_apply_credit", "yes"),
    ],
)
def test_bad_json_in_the_table_names_the_setting(session, name, stored):
    session.add(Setting(name=name, value=stored))
    session.flush()
    with pytest.raises(ValidationError) as info:
        load_settings(session)
    assert info.value.field == f"settings.{name}"
    assert info.value.value == stored
    assert info.value.rule == "is not valid JSON"


@pytest.mark.parametrize(
    ("name", "stored"),
    [
        ("invoice_generation_days", '"fourteen"'),
        ("auto_apply_credit", '"yes"'),
        ("auto_apply_credit", "1"),
        ("late_fee_amount", "2.5"),  # a JSON float: money must be a string
        ("late_fee_amount", '"abc"'),
        ("invoice_generation_days_by_cycle", "[1, 2]"),
        ("invoiceable_statuses", "5"),
    ],
)
def test_a_wrong_type_in_the_table_names_the_setting(session, name, stored):
    session.add(Setting(name=name, value=stored))
    session.flush()
    with pytest.raises(ValidationError) as info:
        load_settings(session)
    assert info.value.field == f"settings.{name}"
    assert "is not a valid value" in info.value.rule


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("invoice_generation_days", "abc"),
        ("invoice_generation_days", None),
        ("invoice_generation_days", True),
        ("invoice_generation_days", [14]),
        ("continuous_invoice_generation", "true"),
        ("continuous_invoice_generation", 1),
        ("phone_number_formatting", None),
        ("add_funds_minimum", 10.5),
        ("add_funds_minimum", "ten"),
        ("add_funds_minimum", False),
        ("invoice_generation_days_by_cycle", {"Annually": "thirty"}),
        ("invoice_generation_days_by_cycle", "Annually"),
        ("domain_invoice_generation_days", "soon"),
        ("invoiceable_statuses", 3),
        ("invoiceable_statuses", "Active"),
        ("invoice_generation_days", 14.7),
        ("invoice_generation_days_by_cycle", {"Annually": 2.5}),
        ("daily_run_time", None),
        ("late_fee_type", 5),
        ("late_fee_amount", "NaN"),
    ],
)
def test_a_wrong_value_is_refused_naming_the_setting(name, value):
    with pytest.raises(ValidationError) as info:
        settings_from_mapping({name: value})
    assert info.value.field == f"settings.{name}"
    assert info.value.value == value
    assert "is not a valid value" in info.value.rule


def test_save_settings_validates_before_writing(session):
    with pytest.raises(ValidationError) as info:
        save_settings(session, invoice_generation_days=7, auto_apply_credit="yes")
    assert info.value.field == "settings.auto_apply_credit"
    assert list(session.new) == []
    assert session.execute(select(Setting)).first() is None
    assert load_settings(session) == BillingSettings()


def test_save_settings_refuses_an_unknown_name(session):
    with pytest.raises(ValidationError) as info:
        save_settings(session, invoice_generation_dayz=7)
    assert (info.value.field, info.value.value, info.value.rule) == (
        "settings", "invoice_generation_dayz", "is not a known setting")
    assert session.execute(select(Setting)).first() is None


def test_save_settings_refuses_an_unknown_name_before_writing_anything(session):
    with pytest.raises(ValidationError):
        save_settings(session, invoice_generation_days=7, invoice_generation_dayz=7)
    # Nothing pending either (the session does not autoflush: a later commit would write it).
    assert list(session.new) == []


def test_settings_from_mapping_ignores_unknown_names():
    assert settings_from_mapping({"SomeOtherAppSetting": "x", "late_fee_days": 3}) == BillingSettings(late_fee_days=3)
