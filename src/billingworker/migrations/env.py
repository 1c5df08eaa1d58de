"""Alembic environment: run by ``billingworker db upgrade`` (see billingworker.migrate).

Online (the default) it migrates the database at the URL. Offline (``db upgrade --sql``) it only
writes the SQL script for the URL's dialect (to stdout, or ``Config.output_buffer``), without
connecting: ``mysql://`` is spelled for MySQL 8, ``mariadb://`` for MariaDB, ``postgresql://``
for PostgreSQL; SQLite is refused (its batch migrations read the database).
"""

from alembic import context
from sqlalchemy.engine import make_url

from billingworker.db import create_db_engine
from billingworker.domain.models import Base
from billingworker.store import mysql_alter_ddl  # noqa: F401 - MySQL 8's spelling of column changes
from billingworker.store.mysql_ddl import use_types_of

config = context.config
target_metadata = Base.metadata
# MySQL/MariaDB spell partial unique indexes with generated columns typed like the models' columns.
use_types_of(target_metadata)


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if make_url(url).get_backend_name() == "sqlite":
        # SQLite cannot ALTER most things in place: batch mode rebuilds a table from what it reads
        # of it, which needs the database. Its schema is the worker's own file: migrate it online.
        raise SystemExit(
            "an SQL script is not available for SQLite (its batch migrations read the "
            "database): run billingworker db upgrade without --sql"
        )
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        as_sql=True,
    )
    with context.begin_transaction():
        context.run_migrations()


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
    run_migrations_offline()
else:
    run_migrations_online()
