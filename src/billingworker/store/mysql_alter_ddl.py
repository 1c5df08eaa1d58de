"""MySQL 8's spelling of Alembic's column changes (``op.alter_column``): imported by the
migrations' environment, so a worker that never migrates never loads Alembic's DDL.

``store.mysql_ddl`` writes a TEXT/BLOB/JSON column's literal default as an expression,
``DEFAULT ('')``, where a table or a column is created; Alembic writes ``MODIFY``/``CHANGE``
and ``ALTER COLUMN ... SET DEFAULT`` itself, past that. These hooks give them the same spelling,
so a later migration that changes such a default runs on MySQL 8 (which refuses the literal form
on these types, error 1101).
"""

from __future__ import annotations

from alembic.ddl import mysql as alembic_mysql
from sqlalchemy.ext.compiler import compiles

from .mysql_ddl import column_type_of, spelled_for_mysql8, wants_expression_default

# Alembic's own spellings, wrapped below (the hooks of the same construct replace them).
_alembic_modify = alembic_mysql._mysql_modify_column
_alembic_change = alembic_mysql._mysql_change_column
_alembic_alter_default = alembic_mysql._mysql_alter_default


def _default_as_expression(sql: str, compiler, default) -> str:
    formatted = alembic_mysql.format_server_default(compiler, default)
    if formatted.lstrip()[:1] not in ("'", '"'):
        return sql  # already an expression, or a function
    return sql.replace(f"DEFAULT {formatted}", f"DEFAULT ({formatted})", 1)


def _column_change(alembic_spelling):
    """MODIFY / CHANGE: Alembic's spelling, a TEXT default made an expression on MySQL 8."""
    def spell(element, compiler, **kw):
        sql = alembic_spelling(element, compiler, **kw)
        if element.default not in (False, None) and spelled_for_mysql8(compiler.dialect) \
                and wants_expression_default(element.type_):
            return _default_as_expression(sql, compiler, element.default)
        return sql
    return spell


compiles(alembic_mysql.MySQLModifyColumn, "mysql", "mariadb")(_column_change(_alembic_modify))
compiles(alembic_mysql.MySQLChangeColumn, "mysql", "mariadb")(_column_change(_alembic_change))


@compiles(alembic_mysql.MySQLAlterDefault, "mysql", "mariadb")
def _alter_default(element, compiler, **kw):
    sql = _alembic_alter_default(element, compiler, **kw)
    if element.default is None or not spelled_for_mysql8(compiler.dialect):
        return sql
    # ALTER COLUMN ... SET DEFAULT names no type: the models' column says which it is.
    if wants_expression_default(column_type_of(element.table_name, element.column_name)):
        return _default_as_expression(sql, compiler, element.default)
    return sql
