"""How billingworker's tables are spelled on MySQL/MariaDB: registered once, used by the
migrations and by ``metadata.create_all`` alike (PostgreSQL and SQLite DDL is untouched).

- Every table: ``ENGINE=InnoDB`` (transactions, row locks, foreign keys) and ``utf8mb4`` with a
  binary, no-pad collation, whatever the shared database's defaults are: a string compares as
  it does on PostgreSQL (case-sensitively, trailing spaces significant: ``'a@x.com'`` and
  ``'A@x.com'`` are two emails to a unique key, as they are there; look-ups that must ignore
  case say ``lower()``, as they do for PostgreSQL) and any script, emoji included, round-trips.
  MariaDB: ``utf8mb4_nopad_bin``; MySQL 8: ``utf8mb4_0900_bin`` (also binary and no-pad).
- Foreign keys: InnoDB checks them at each statement and has no ``DEFERRABLE``; the two that
  PostgreSQL checks at commit (an invoice's items and billed periods, written before the invoice
  row) are immediate here, and ``store.bulk.invoice_rows_first`` makes the billing write the
  invoice row first on this database: the same rows are kept, the guarantee unchanged.
- Partial unique indexes (``postgresql_where``/``sqlite_where``: one default pay method per
  client, one real daily run per day, one pending and one succeeded capture per invoice) do not
  exist here. Each becomes a stored generated column per indexed column, ``<index>_key``, equal
  to the column where the condition holds and NULL elsewhere, with a unique index of the same
  name on it: InnoDB lets any number of NULLs through a unique key, so exactly the rows the
  condition selects are unique, the same guarantee (STORED on MariaDB, VIRTUAL on MySQL 8: see
  ``spelled_for_mysql8``). Written here, so a migration that creates
  or drops such an index needs no MySQL branch of its own; ``comparison_filter`` tells the
  models-versus-migrations comparison that these columns and indexes are the models' ones.
- ``DateTime``: ``DATETIME(6)`` (microseconds, as PostgreSQL keeps them; plain ``DATETIME``
  would round them away). Stored in UTC: the connection's time zone is ``+00:00`` (db.py).
"""

from __future__ import annotations

from sqlalchemy import JSON, DateTime, LargeBinary, Text
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.mysql.base import MySQLDDLCompiler
from sqlalchemy.exc import CompileError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.schema import CreateIndex, CreateTable, DropIndex, ForeignKeyConstraint, Index
from sqlalchemy.types import NullType

#: Made by migration 0001 on MySQL/MariaDB only (not a model): see store.locks.transaction_lock.
MYSQL_ONLY_TABLE = "billingworker_sequences"
MARIADB_COLLATION = "utf8mb4_nopad_bin"
MYSQL_COLLATION = "utf8mb4_0900_bin"


#: Set on a MariaDB dialect by ``store.dialect.as_mysql8`` (tests, bench): spell the DDL as for
#: MySQL 8 too, so that the MySQL 8 spelling is built and run on a real InnoDB server.
MYSQL8_SPELLING = "billingworker_mysql8_spelling"


def spelled_for_mysql8(dialect) -> bool:
    """Whether the DDL takes MySQL 8's spelling: generated key columns VIRTUAL (MySQL 8 refuses a
    CASCADE foreign key on a base column of a STORED generated column, which MariaDB allows) and
    TEXT defaults as expressions (MySQL 8 refuses a literal DEFAULT on TEXT, error 1101)."""
    return not getattr(dialect, "is_mariadb", False) or getattr(dialect, MYSQL8_SPELLING, False)


def collation(dialect) -> str:
    return MARIADB_COLLATION if getattr(dialect, "is_mariadb", False) else MYSQL_COLLATION


def table_options(dialect) -> str:
    return f"ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE={collation(dialect)}"


@compiles(CreateTable, "mysql")
@compiles(CreateTable, "mariadb")
def _create_table(element, compiler, **kw):
    sql = compiler.visit_create_table(element, **kw)
    if "ENGINE=" in sql.upper() or "CHARSET" in sql.upper():
        return sql  # the table states its own options
    return sql.rstrip() + " " + table_options(compiler.dialect) + "\n\n"


@compiles(DateTime, "mysql")
@compiles(DateTime, "mariadb")
def _datetime(type_, compiler, **kw):
    return "DATETIME(6)"


@compiles(ForeignKeyConstraint, "mysql")
@compiles(ForeignKeyConstraint, "mariadb")
def _foreign_key(constraint, compiler, **kw):
    sql = compiler.visit_foreign_key_constraint(constraint, **kw)
    return sql.replace(" DEFERRABLE", "").replace(" INITIALLY DEFERRED", "").replace(" INITIALLY IMMEDIATE", "")


#: Where the column types of a migration's partial index come from (Alembic builds the index on a
#: table stub whose columns have no type): the models' metadata, set by migrations/env.py.
_type_source = None


def use_types_of(metadata) -> None:
    global _type_source
    _type_source = metadata


def _column_type(index: Index, column):
    if not isinstance(column.type, NullType):
        return column.type
    table = _type_source.tables.get(index.table.name) if _type_source is not None else None
    if table is None or column.name not in table.c:
        raise CompileError(f"MySQL: the type of {index.table.name}.{column.name} (partial index {index.name}) is "
                           "unknown: give the column its type, or the table to the models")
    return table.c[column.name].type


def partial_where(index: Index):
    """The condition of a partial index, as the models and migrations state it (or None)."""
    for dialect in ("postgresql", "sqlite"):
        where = index.dialect_options[dialect]._non_defaults.get("where")
        if where is not None:
            return where
    return None


def generated_key_columns(index_name: str, count: int) -> list[str]:
    return [f"{index_name}_key"] if count == 1 else [f"{index_name}_key{n}" for n in range(1, count + 1)]


@compiles(CreateIndex, "mysql")
@compiles(CreateIndex, "mariadb")
def _create_index(create, compiler, **kw):
    index = create.element
    where = partial_where(index)
    if where is None or not index.unique:
        return compiler.visit_create_index(create, **kw)
    preparer = compiler.preparer
    condition = compiler.sql_compiler.process(where, literal_binds=True, include_table=False)
    columns = list(index.columns)
    names = generated_key_columns(index.name, len(columns))
    adds = [f"ADD COLUMN {preparer.quote(name)} {compiler.type_compiler.process(_column_type(index, column))}"
            f" AS (CASE WHEN {condition} THEN {preparer.quote(column.name)} END) {_generated_kind(compiler.dialect)}"
            for name, column in zip(names, columns, strict=True)]
    keys = ", ".join(preparer.quote(name) for name in names)
    return (f"ALTER TABLE {preparer.format_table(index.table)} {', '.join(adds)},"
            f" ADD UNIQUE INDEX {preparer.quote(index.name)} ({keys})")


def _generated_kind(dialect) -> str:
    # VIRTUAL on MySQL 8: a unique index on a virtual column is stored like any secondary index
    # (the same guarantee), and a CASCADE foreign key on its base column is allowed there.
    return "VIRTUAL" if spelled_for_mysql8(dialect) else "STORED"


_literal_default = MySQLDDLCompiler.get_column_default_string


def wants_expression_default(type_) -> bool:
    """Whether MySQL 8 takes a default of this column type only as an expression (TEXT, BLOB,
    JSON: a literal ``DEFAULT ''`` is error 1101 there). MySQL's own TINYTEXT, MEDIUMTEXT and
    LONGTEXT are not ``Text`` to SQLAlchemy (they derive from ``String``): named here."""
    return isinstance(type_, (Text, LargeBinary, JSON, mysql.TINYTEXT, mysql.MEDIUMTEXT, mysql.LONGTEXT))


def column_type_of(table_name: str, column_name: str):
    """The models' type of ``table_name.column_name`` (None if the models do not know it)."""
    table = _type_source.tables.get(table_name) if _type_source is not None else None
    return table.c[column_name].type if table is not None and column_name in table.c else None


def _default_string(self, column):
    """A TEXT/BLOB/JSON column's literal default as an expression, ``DEFAULT ('')``, on MySQL 8
    (8.0.13+), which refuses the literal form on these types (MariaDB takes either). Alembic's
    column changes (MODIFY, ALTER ... SET DEFAULT) get the same in ``store.mysql_alter_ddl``."""
    default = _literal_default(self, column)
    if (default is not None and spelled_for_mysql8(self.dialect) and default.lstrip()[:1] in ("'", '"')
            and wants_expression_default(column.type)):
        return f"({default})"
    return default


# One method of SQLAlchemy's MySQL DDL compiler, wrapped: both CREATE TABLE and Alembic's
# ADD COLUMN spell a column's default through it, and no compile hook reaches it.
MySQLDDLCompiler.get_column_default_string = _default_string


@compiles(DropIndex, "mysql")
@compiles(DropIndex, "mariadb")
def _drop_index(drop, compiler, **kw):
    index = drop.element
    if partial_where(index) is None:
        return compiler.visit_drop_index(drop, **kw)
    preparer = compiler.preparer
    drops = ", ".join(f"DROP COLUMN {preparer.quote(name)}"
                      for name in generated_key_columns(index.name, max(len(index.columns), 1)))
    return f"ALTER TABLE {preparer.format_table(index.table)} DROP INDEX {preparer.quote(index.name)}, {drops}"


def comparison_filter(dialect_name: str, metadata):
    """An Alembic ``include_object`` hook for comparing ``metadata`` with a MySQL/MariaDB database:
    leaves out the partial unique indexes and the deferrable foreign keys (checked by
    tests/store/test_schema_guarantees.py instead) and the generated columns, which the models do
    not name. None elsewhere: compare all."""
    if dialect_name not in ("mysql", "mariadb"):
        return None
    partial = {index.name: len(index.columns) for table in metadata.tables.values()
               for index in table.indexes if index.unique and partial_where(index) is not None}
    generated = {name for index_name, count in partial.items()
                 for name in generated_key_columns(index_name, count)}
    deferred = {fk.name for table in metadata.tables.values() for fk in table.foreign_key_constraints
                if fk.deferrable}

    def include(obj, name, type_, reflected, compare_to) -> bool:
        if type_ == "table" and name == MYSQL_ONLY_TABLE:
            return False  # the lock rows of store.locks.transaction_lock, made by migration 0001 on MySQL only
        if type_ == "index" and name in partial:
            return False
        if type_ == "foreign_key_constraint" and name in deferred:
            # immediate here (no DEFERRABLE): their guarantee tested by tests/store/test_schema_guarantees.py
            return False
        return not (type_ == "column" and name in generated)

    return include
