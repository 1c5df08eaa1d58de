"""``billingworker seed-demo``: the demo clients into a real database (SQLite and PostgreSQL),
with progress, never into a database that already holds clients unless ``--force``."""

from __future__ import annotations

from sqlalchemy import func, select

from billingworker.db import unit_of_work
from billingworker.domain.models import Client, Currency, Service, Setting

from .conftest import cli, db_url


def count(engine, model) -> int:
    with unit_of_work(engine) as session:
        return session.scalar(select(func.count()).select_from(model))


def test_seed_demo_fills_an_empty_database_and_shows_progress(engine):
    result = cli(None, "seed-demo", "--database-url", db_url(engine))

    assert result.exit_code == 0, result.output
    assert "seeding demo clients" in result.output and "12/12" in result.output
    assert "Seeded 12 demo clients into" in result.output
    assert "billingworker enqueue daily-run" in result.output and "status --watch" in result.output
    assert count(engine, Client) == 12 and count(engine, Service) >= 12
    with unit_of_work(engine) as session:
        assert sorted(session.scalars(select(Currency.code))) == ["EUR", "GBP", "USD"]
        assert session.get(Setting, "company_name").value == '"Demo Hosting Ltd"'


def test_seed_demo_uses_database_url_by_default_and_more_clients_on_request(engine):
    result = cli(engine, "seed-demo", "--clients", "30")

    assert result.exit_code == 0, result.output
    assert "30/30" in result.output
    assert count(engine, Client) == 30
    with unit_of_work(engine) as session:
        emails = list(session.scalars(select(Client.email)))
    assert len(set(emails)) == 30


def test_seed_demo_refuses_a_database_that_holds_clients(engine):
    # Given a database with a client and settings of its own
    with unit_of_work(engine) as session:
        session.add(Client(first_name="Real", last_name="Customer", email="real@example.com"))
        session.add(Setting(name="company_name", value='"Real Hosting"'))
        session.commit()

    refused = cli(engine, "seed-demo")

    assert refused.exit_code == 1
    assert "already holds 1 clients" in refused.output and "--force" in refused.output
    assert count(engine, Client) == 1

    # With --force the demo clients are added, and nothing of the installation is changed
    forced = cli(engine, "seed-demo", "--force")
    assert forced.exit_code == 0, forced.output
    assert count(engine, Client) == 13
    with unit_of_work(engine) as session:
        assert session.get(Setting, "company_name").value == '"Real Hosting"'
    again = cli(engine, "seed-demo", "--force", "--clients", "2")
    assert again.exit_code == 0 and count(engine, Client) == 15
    assert count(engine, Currency) == 3


def test_seed_demo_names_a_database_that_does_not_answer():
    result = cli(None, "seed-demo", "--database-url", "postgresql+psycopg://nobody:secret@127.0.0.1:1/nothing")

    assert result.exit_code == 1
    assert result.output.startswith("Error: database at postgresql+psycopg://nobody:***@127.0.0.1:1/nothing")
    assert "secret" not in result.output
