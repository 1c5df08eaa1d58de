"""The Alembic migrations build exactly the schema the models describe, on both databases."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from billingworker.domain.models import Base
from billingworker.store.mysql_ddl import comparison_filter


def test_migrations_match_the_models(engine):
    # MySQL/MariaDB: partial unique indexes are generated columns there (their guarantees are
    # tested by tests/store/test_schema_guarantees.py).
    include = comparison_filter(engine.dialect.name, Base.metadata)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, **({"include_object": include} if include else {})})
        diff = compare_metadata(context, Base.metadata)
    assert diff == []


def test_every_table_is_created(engine):
    tables = set(inspect(engine).get_table_names())
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_upgrade_is_idempotent(engine):
    from billingworker.migrate import upgrade_engine

    upgrade_engine(engine)  # already at head: nothing to do, nothing breaks
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() is not None
