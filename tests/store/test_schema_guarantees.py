"""What the schema guarantees, the same on every database: on MySQL/MariaDB some guarantees are
spelled differently (store/mysql_ddl.py: generated columns for partial unique indexes, binary
no-pad collation, DATETIME(6)), so each is checked here by its effect, not by its spelling."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import inspect, select
from sqlalchemy.exc import IntegrityError

from billingworker.domain.models import Client, DailyRun, PayMethod, User
from billingworker.store.conflicts import is_unique_clash_on
from tests import factories as f


def test_one_default_pay_method_per_client_but_any_number_of_others(session):
    # Given a client with a default card and two other cards
    c = f.client(session)
    f.card(session, c, is_default=True)
    f.card(session, c, is_default=False)
    f.card(session, c, is_default=False)
    other = f.client(session)
    f.card(session, other, is_default=True)  # another client's default is no clash
    session.commit()
    # When a second default card is added, Then the partial unique key refuses it
    with pytest.raises(IntegrityError) as refused:
        f.card(session, c, is_default=True)
    assert is_unique_clash_on(refused.value, "pay_methods")
    session.rollback()
    assert session.scalar(select(PayMethod.id).where(PayMethod.client_id == c.id, PayMethod.is_default)) is not None


def test_one_real_daily_run_per_day_and_any_number_of_dry_runs(session):
    now = datetime(2026, 1, 10, 6, 0)
    for dry in (True, True, False):
        session.add(DailyRun(run_date=date(2026, 1, 10), dry_run=dry, started_at=now))
    session.commit()
    session.add(DailyRun(run_date=date(2026, 1, 10), dry_run=False, started_at=now))
    with pytest.raises(IntegrityError) as refused:
        session.flush()
    assert is_unique_clash_on(refused.value, "daily_runs")


def test_an_email_compares_case_sensitively_as_on_postgresql(session):
    # Given a login "Ada@Example.com"
    session.add(User(email="Ada@Example.com"))
    session.commit()
    # Then "ada@example.com" is another address to the unique key and to "=" (look-ups that
    # ignore case say lower(), as password_reset does) ...
    session.add(User(email="ada@example.com"))
    session.commit()
    assert session.scalars(select(User.email).where(User.email == "ADA@EXAMPLE.COM")).all() == []
    # ... and a trailing space makes another string too (MySQL's PAD SPACE collations would not)
    assert session.scalars(select(User.email).where(User.email == "ada@example.com ")).all() == []
    session.add(User(email="Ada@Example.com"))
    with pytest.raises(IntegrityError):
        session.flush()


@pytest.mark.parametrize("name", ["Zoë Ångström", "王秀英", "Алёна", "محمد", "🦄 Unicorn Hosting 🚀", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢"])
def test_names_and_addresses_in_any_script_round_trip(session, name):
    c = f.client(session, first_name=name, company_name=name, address1=name, email=f"{name}@example.com")
    session.commit()
    session.expire_all()
    got = session.get(Client, c.id)
    assert (got.first_name, got.company_name, got.address1, got.email) == (name, name, name, f"{name}@example.com")


def test_money_keeps_its_exact_decimal_value(session):
    c = f.client(session, credit_balance=Decimal("12345678.91"))
    session.commit()
    session.expire_all()
    assert session.get(Client, c.id).credit_balance == Decimal("12345678.91")


def test_the_items_and_billed_periods_of_an_invoice_keep_their_foreign_keys(engine):
    # Deferrable on PostgreSQL, immediate on MySQL (which cannot defer): present on all.
    inspector = inspect(engine)
    for table in ("invoice_items", "billed_periods"):
        targets = {fk["referred_table"] for fk in inspector.get_foreign_keys(table)}
        assert "invoices" in targets, table


def test_nulls_last_sorts_nulls_after_every_value_on_each_database(session):
    from billingworker.store.ordering import nulls_last

    # Given runs finished on two days and one still running (finished_at NULL)
    started = datetime(2026, 1, 10, 6, 0)
    for day, finished in ((10, None), (11, datetime(2026, 1, 11, 7)), (12, datetime(2026, 1, 12, 7))):
        session.add(DailyRun(run_date=date(2026, 1, day), dry_run=False, started_at=started, finished_at=finished))
    session.commit()
    # When sorted by finish, newest or oldest first, Then the unfinished run comes last either way
    newest = session.scalars(select(DailyRun.run_date).order_by(
        *nulls_last(session, DailyRun.finished_at, descending=True))).all()
    oldest = session.scalars(select(DailyRun.run_date).order_by(*nulls_last(session, DailyRun.finished_at))).all()
    assert [d.day for d in newest] == [12, 11, 10]
    assert [d.day for d in oldest] == [11, 12, 10]
