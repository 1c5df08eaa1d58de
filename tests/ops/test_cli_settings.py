"""``billingworker settings show|set`` on SQLite and PostgreSQL, and the one set of rules they
use (``domain.settings.check_setting`` / ``setting_from_text``, through ``save_settings``)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from sqlalchemy import select

from billingworker.db import unit_of_work
from billingworker.domain.errors import ValidationError
from billingworker.domain.models import Setting
from billingworker.domain.settings import (
    SETTINGS,
    UnknownSetting,
    check_setting,
    load_settings,
    save_settings,
    setting_from_text,
)

from .conftest import cli


def stored(engine) -> dict[str, str]:
    with unit_of_work(engine) as session:
        return dict(session.execute(select(Setting.name, Setting.value)).all())


def test_set_takes_values_as_an_operator_types_them(engine):
    result = cli(engine, "settings", "set", "late_fee_amount=5.00", "daily_run_time=6:30", "auto_apply_credit=no",
                 "invoiceable_statuses=Active, Suspended", "domain_invoice_generation_days=null",
                 'invoice_generation_days_by_cycle={"Annually": 30}', "late_fee_type=Fixed")

    assert result.exit_code == 0, result.output
    assert "saved late_fee_amount = 5.00" in result.output
    assert "saved daily_run_time = 06:30" in result.output
    assert stored(engine) == {"late_fee_amount": '"5.00"', "daily_run_time": '"06:30"', "auto_apply_credit": "false",
                              "invoiceable_statuses": '["Active", "Suspended"]',
                              "domain_invoice_generation_days": "null",
                              "invoice_generation_days_by_cycle": '{"Annually": 30}', "late_fee_type": '"fixed"'}
    with unit_of_work(engine) as session:
        loaded = load_settings(session)
    assert loaded.late_fee_amount == Decimal("5.00") and loaded.daily_run_time == "06:30"


@pytest.mark.parametrize(("assignment", "message"), [
    ("daily_run_time=25:99", "settings.daily_run_time: '25:99' must be a time HH:MM from 00:00 to 23:59"),
    ("daily_run_time=9", "settings.daily_run_time: '9' must be a time HH:MM"),
    ("late_fee_amount=five", "settings.late_fee_amount: 'five' is not a decimal number"),
    ("late_fee_amount=-1", "settings.late_fee_amount: '-1' must not be negative"),
    ("late_fee_amount=1.005", "settings.late_fee_amount: '1.005' has more than 2 decimal places"),
    ("invoice_generation_days=-3", "settings.invoice_generation_days: '-3' must be a whole number"),
    ("invoice_generation_days=1.5", "settings.invoice_generation_days: '1.5' must be a whole number"),
    ("auto_apply_credit=maybe", "settings.auto_apply_credit: 'maybe' must be true or false"),
    ("tax_type=sideways", "settings.tax_type: 'sideways' must be one of exclusive, inclusive"),
    ("invoiceable_statuses=", "settings.invoiceable_statuses: [] must be a non-empty list of statuses"),
    ("invoice_generation_days_by_cycle=Annually", "must be a JSON object of cycle -> days"),
    ('invoice_generation_days_by_cycle={"Annually": "x"}', "settings.invoice_generation_days_by_cycle.Annually"),
    ("daily_run_time", "'daily_run_time' is not NAME=VALUE"),
])
def test_a_bad_value_is_refused_naming_the_setting_and_nothing_is_saved(engine, assignment, message):
    # Given a good value next to the bad one
    result = cli(engine, "settings", "set", "invoice_generation_days=10", assignment)

    # Then the command fails as a usage error, says why, and saves neither
    assert result.exit_code == 2
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert "Traceback" not in result.output
    assert stored(engine) == {}


def test_an_unknown_setting_is_refused_with_the_known_names(engine):
    result = cli(engine, "settings", "set", "invoice_generation_dayz=10")

    assert result.exit_code == 2
    assert "Error: 'invoice_generation_dayz' is not a setting; the settings are: invoice_generation_days," \
        in result.output
    assert "system_url" in result.output
    assert stored(engine) == {}


def test_show_prints_every_setting_with_its_value_default_and_meaning(engine):
    cli(engine, "settings", "set", "late_fee_amount=5.00", "invoiceable_statuses=Active,Suspended")

    result = cli(engine, "settings", "show")

    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:] if line and not line.startswith(" ")}
    assert set(rows) == set(SETTINGS)
    assert rows["late_fee_amount"].split()[:3] == ["late_fee_amount", "5.00", "no"]
    assert "(0)" in rows["late_fee_amount"] and "The percentage" in rows["late_fee_amount"]
    assert rows["invoiceable_statuses"].split()[:4] == ["invoiceable_statuses", "Active,", "Suspended", "no"]
    assert rows["daily_run_time"].split()[:3] == ["daily_run_time", "09:00", "yes"]
    assert rows["auto_apply_credit"].split()[:3] == ["auto_apply_credit", "true", "yes"]
    # no Python reprs
    assert "Decimal(" not in result.output and "('Active'" not in result.output and "True" not in result.output


def test_show_json_is_plain_json(engine):
    cli(engine, "settings", "set", "late_fee_amount=5.00")

    result = cli(engine, "settings", "show", "--json")

    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["late_fee_amount"] == {"name": "late_fee_amount", "value": "5.00", "default": "0",
                                       "is_default": False, "description": SETTINGS["late_fee_amount"].description}
    assert rows["invoiceable_statuses"]["value"] == ["Active", "Pending", "Suspended"]
    assert rows["domain_invoice_generation_days"]["value"] is None


def test_show_names_a_setting_another_application_wrote_badly(engine):
    with unit_of_work(engine) as session:
        session.add(Setting(name="auto_apply_credit", value='"yes"'))
        session.commit()

    result = cli(engine, "settings", "show")

    assert result.exit_code == 1
    assert "settings.auto_apply_credit" in result.output and "Traceback" not in result.output


# --- the rules themselves (domain/settings.py), as every writer gets them ---------------------------

def test_save_settings_refuses_what_the_cli_refuses(session):
    with pytest.raises(ValidationError) as info:
        save_settings(session, daily_run_time="24:00")
    assert info.value.field == "settings.daily_run_time"
    with pytest.raises(UnknownSetting) as unknown:
        save_settings(session, no_such_setting=1)
    assert "invoice_generation_days" in unknown.value.known
    assert session.execute(select(Setting)).first() is None


@pytest.mark.parametrize(("name", "value", "expected"), [
    ("daily_run_time", "00:00", "00:00"),
    ("daily_run_time", "23:59", "23:59"),
    ("daily_run_time", "7:05", "07:05"),
    ("late_fee_amount", Decimal("12.50"), "12.50"),
    ("late_fee_amount", 5, "5"),
    ("late_fee_type", "Fixed Amount", "fixed amount"),
    ("domain_invoice_generation_days", None, None),
    ("invoiceable_statuses", ("Active",), ["Active"]),
])
def test_check_setting_returns_the_json_value_to_store(name, value, expected):
    assert check_setting(name, value) == expected


@pytest.mark.parametrize(("name", "value"), [
    ("daily_run_time", "24:00"), ("daily_run_time", "12:60"), ("daily_run_time", "12:5"), ("daily_run_time", 900),
    ("late_fee_amount", 5.0), ("late_fee_amount", "NaN"), ("auto_apply_credit", "true"),
    ("invoice_generation_days", True), ("invoice_generation_days", "14"), ("company_name", 5),
])
def test_check_setting_is_strict_about_types(name, value):
    with pytest.raises(ValidationError) as info:
        check_setting(name, value)
    assert info.value.field == f"settings.{name}"


def test_setting_from_text_takes_quoted_money_too():
    assert setting_from_text("late_fee_amount", '"5.00"') == "5.00"
    assert setting_from_text("phone_number_formatting", "OFF") is False


# --- bounds: no value that breaks every daily run ------------------------------------------------

@pytest.mark.parametrize(("assignment", "message"), [
    ("invoice_generation_days=99999999",
     "settings.invoice_generation_days: 99999999 must be a whole number from 0 to 3650"),
    ("late_fee_days=3651", "settings.late_fee_days: 3651 must be a whole number from 0 to 3650"),
    ("domain_invoice_generation_days=4000", "settings.domain_invoice_generation_days: 4000 must be a whole number "
     "from 0 to 3650"),
    ('invoice_generation_days_by_cycle={"Annually": 99999999}',
     "settings.invoice_generation_days_by_cycle.Annually: 99999999 must be a whole number from 0 to 3650"),
    ('invoice_generation_days_by_cycle={"Nope": 3}', "settings.invoice_generation_days_by_cycle.Nope: 'Nope' is not "
     "a recurring billing cycle (one of Monthly, Quarterly, Semi-Annually, Annually, Biennially, Triennially)"),
    ("card_capture_retry_weeks=1000000000", "settings.card_capture_retry_weeks: 1000000000 must be a whole number "
     "from 0 to 520"),
    ("password_reset_validity_hours=9000", "from 0 to 8760"),
    ("add_funds_minimum=500", "settings.add_funds_minimum: '500' must keep add_funds_minimum (500) at most "
     "add_funds_maximum (100)"),
    ("add_funds_maximum=301", "settings.add_funds_maximum: '301' must keep add_funds_maximum (301) at most "
     "add_funds_maximum_balance (300)"),
    # too many digits to read, or JSON too deep: an error naming the setting, no traceback
    ("late_fee_days=" + "9" * 5000, "settings.late_fee_days: '9999999999999999999999999999999999999999... "
     "(5000 characters)' must be a whole number from 0 to 3650"),
    ('invoice_generation_days_by_cycle={"Annually": ' + "9" * 5000 + "}", "is not valid JSON (Exceeds the limit"),
    ("invoice_generation_days_by_cycle=" + "[" * 100_000, "is JSON nested too deep"),
])
def test_a_value_out_of_bounds_is_refused_and_nothing_is_saved(engine, assignment, message):
    result = cli(engine, "settings", "set", "invoice_generation_days=10", assignment)

    assert result.exit_code == 2, result.output
    assert result.output.startswith("Error: ") and message in result.output, result.output
    assert stored(engine) == {}


def test_the_add_funds_bounds_are_checked_against_the_stored_settings(engine):
    # Raising the maximum and the minimum together, in either order of the words, is fine
    together = cli(engine, "settings", "set", "add_funds_minimum=150", "add_funds_maximum=200")
    # ... but the minimum may not pass the maximum now stored
    over = cli(engine, "settings", "set", "add_funds_minimum=250")

    assert together.exit_code == 0, together.output
    assert over.exit_code == 2 and "add_funds_minimum (250) at most add_funds_maximum (200)" in over.output
    assert stored(engine) == {"add_funds_minimum": '"150"', "add_funds_maximum": '"200"'}


def test_the_largest_day_count_allowed_still_previews_a_daily_run(engine):
    # Given a client with a service due in a year (its invoice is within 3650 days)
    from datetime import date, timedelta

    from sqlalchemy.orm import Session

    from tests import factories as f

    with Session(engine, expire_on_commit=False) as session:
        f.service(session, f.client(session), next_due_date=date.today() + timedelta(days=365))
        session.commit()

    set_ = cli(engine, "settings", "set", "invoice_generation_days=3650", "late_fee_days=3650",
               "unpaid_reminder_days=3650", "card_capture_days_before_due=3650")
    preview = cli(engine, "daily-run", "--dry-run", "--json")

    assert set_.exit_code == 0, set_.output
    assert preview.exit_code == 0, preview.output
    view = json.loads(preview.stdout)
    generate = view["tasks"][0]
    assert generate["failures"] == [] and len(generate["preview"]) == 1
