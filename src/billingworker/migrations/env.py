"""Alembic environment: run by ``billingworker db upgrade`` (see billingworker.migrate)."""

from alembic import context

from billingworker.db import create_db_engine
from billingworker.domain.models import Base
from billingworker.store.mysql_ddl import use_types_of

config = context.config
target_metadata = Base.metadata
# MySQL/MariaDB spell partial unique indexes with generated columns typed like the models' columns.
use_types_of(target_metadata)


def run_migrations_online() -> None:
    connectable = config.attributes.get("connection")
    if connectable is not None:
        _run(connectable)
        return
    engine = create_db_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


def _run(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things in place: batch mode rebuilds the table.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) migrations are not supported; run billingworker db upgrade")
run_migrations_online()
