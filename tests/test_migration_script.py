"""``billingworker db upgrade --sql``: the migrations as an SQL script, written without a database.

The MariaDB and PostgreSQL scripts, run statement by statement into an empty database, build the
schema ``db upgrade`` builds online. The MySQL 8 script (no MySQL 8 server here) is checked
statically for what MySQL 8 refuses and MariaDB accepts, then run on MariaDB as far as MariaDB can
tell (its collation swapped for MariaDB's).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import Boolean, Date, DateTime, Engine, Integer, Numeric, String, create_engine, inspect, text
from sqlalchemy.dialects.mysql.reserved_words import RESERVED_WORDS_MYSQL

from billingworker.cli import main
from billingworker.db import create_db_engine
from billingworker.domain.models import Base
from billingworker.migrate import alembic_config, upgrade_script
from billingworker.store.mysql_ddl import (
    MARIADB_COLLATION,
    MYSQL_COLLATION,
    comparison_filter,
    generated_key_columns,
    partial_where,
)

from .conftest import MYSQL_ADMIN_URL, PG_ADMIN_URL, TEST_DATABASES

needs_mariadb = pytest.mark.skipif("mariadb" not in TEST_DATABASES, reason="TEST_DATABASES does not name mariadb")
needs_postgresql = pytest.mark.skipif(
    "postgresql" not in TEST_DATABASES, reason="TEST_DATABASES does not name postgresql"
)

#: Our own databases (never the conftest's ``billingworker_test_<pid>``): one per script run.
SCRIPT_DB = f"billingworker_script_{os.getpid()}"
HEAD = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
#: InnoDB's largest index key (DYNAMIC/COMPRESSED rows, 16 KiB pages), in bytes.
INNODB_MAX_KEY_BYTES = 3072
#: What a utf8mb4 character may take in a key: InnoDB reserves the most.
UTF8MB4_BYTES = 4


# -- running a script ------------------------------------------------------------------------------


def statements(script: str) -> list[str]:
    """The statements of a script, in order: split at ``;`` outside quotes, ``--`` comment lines left out."""
    found, current, quote = [], [], None
    for line in script.splitlines(keepends=True):
        if quote is None and not "".join(current).strip() and line.lstrip().startswith("--"):
            continue
        for char in line:
            if quote is not None:
                quote = None if char == quote else quote
            elif char in "'\"`":
                quote = char
            elif char == ";":
                found.append("".join(current).strip())
                current = []
                continue
            current.append(char)
    assert quote is None and not "".join(current).strip(), "the script ends inside a statement"
    return [s for s in found if s]


def run_script(engine: Engine, script: str) -> None:
    """Run each statement as a DBA's client would (autocommit; PostgreSQL's own BEGIN/COMMIT included)."""
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        for statement in statements(script):
            conn.exec_driver_sql(statement)


def models_diff(engine: Engine) -> list:
    """What differs between the models and the database, compared as tests/test_migrations.py does."""
    include = comparison_filter(engine.dialect.name, Base.metadata)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"compare_type": True, **({"include_object": include} if include else {})}
        )
        return compare_metadata(context, Base.metadata)


def snapshot(engine: Engine) -> dict:
    """Every table as reflected, generated columns and the MySQL-only table included, names sorted:
    two databases with the same snapshot have the same schema."""
    insp = inspect(engine)
    tables = {}
    for name in sorted(insp.get_table_names()):
        tables[name] = {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], c.get("default"), str(c.get("computed")))
                for c in insp.get_columns(name)
            ],
            "primary_key": insp.get_pk_constraint(name)["constrained_columns"],
            "foreign_keys": sorted(
                (
                    fk["name"],
                    fk["constrained_columns"],
                    fk["referred_table"],
                    fk["referred_columns"],
                    sorted(fk.get("options", {}).items()),
                )
                for fk in insp.get_foreign_keys(name)
            ),
            "indexes": sorted((ix["name"], ix["column_names"], ix["unique"]) for ix in insp.get_indexes(name)),
            "unique": sorted((uq["name"], uq["column_names"]) for uq in insp.get_unique_constraints(name)),
            "checks": sorted((ck["name"], ck["sqltext"]) for ck in insp.get_check_constraints(name)),
            "options": sorted(insp.get_table_options(name).items()),
        }
    return tables


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def _fresh_database(admin_url: str, drop: str, create: str, *, first: str = "SELECT 1") -> Iterator[Engine]:
    """An empty database of this test's own on the server of ``admin_url``; dropped afterwards
    (``first`` runs before the drop: MariaDB's gives up instead of waiting on a stray lock)."""
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(drop))
        conn.execute(text(create))
    engine = create_db_engine(admin_url.rsplit("/", 1)[0] + "/" + SCRIPT_DB)
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(first))
            conn.execute(text(drop))
        admin.dispose()


@pytest.fixture
def fresh_mariadb() -> Iterator[Engine]:
    """With the server's defaults, as a shared database has them."""
    yield from _fresh_database(MYSQL_ADMIN_URL, f"DROP DATABASE IF EXISTS `{SCRIPT_DB}`",
                               f"CREATE DATABASE `{SCRIPT_DB}`", first="SET SESSION lock_wait_timeout = 10")


@pytest.fixture
def fresh_pg() -> Iterator[Engine]:
    yield from _fresh_database(PG_ADMIN_URL, f'DROP DATABASE IF EXISTS "{SCRIPT_DB}" WITH (FORCE)',
                               f'CREATE DATABASE "{SCRIPT_DB}"')


# -- a. the script builds what the online upgrade builds ------------------------------------------


@needs_mariadb
def test_the_mariadb_script_builds_the_schema_of_the_online_upgrade(fresh_mariadb, mariadb_url):
    script = upgrade_script(f"mariadb://root@127.0.0.1:3306/{SCRIPT_DB}")

    run_script(fresh_mariadb, script)

    assert MARIADB_COLLATION in script and MYSQL_COLLATION not in script
    assert models_diff(fresh_mariadb) == []
    assert current_revision(fresh_mariadb) == HEAD
    online = create_db_engine(mariadb_url)  # migrated online by tests/conftest.py
    try:
        assert snapshot(fresh_mariadb) == snapshot(online)
    finally:
        online.dispose()


@needs_postgresql
def test_the_postgresql_script_builds_the_schema_of_the_online_upgrade(fresh_pg, pg_url):
    script = upgrade_script(f"postgresql://postgres@127.0.0.1:5432/{SCRIPT_DB}")

    run_script(fresh_pg, script)

    assert models_diff(fresh_pg) == []
    assert current_revision(fresh_pg) == HEAD
    online = create_db_engine(pg_url)
    try:
        assert snapshot(fresh_pg) == snapshot(online)
    finally:
        online.dispose()


@needs_mariadb
def test_a_script_from_a_revision_carries_on_from_there(fresh_mariadb):
    url = f"mariadb://root@127.0.0.1:3306/{SCRIPT_DB}"
    run_script(fresh_mariadb, upgrade_script(url, to="0009"))
    assert current_revision(fresh_mariadb) == "0009"

    run_script(fresh_mariadb, upgrade_script(url, from_="0009"))

    assert current_revision(fresh_mariadb) == HEAD
    assert models_diff(fresh_mariadb) == []


# -- b. the MySQL 8 script, read statement by statement -------------------------------------------


@dataclass
class Column:
    table: str
    name: str
    quoted: bool
    type: str
    rest: str
    generated: str | None = None  # the expression of a generated column


@dataclass
class Key:
    table: str
    name: str
    columns: list[str]


@dataclass
class ForeignKey:
    table: str
    name: str
    columns: list[str]
    actions: str  # "ON DELETE CASCADE ..." or ""


@dataclass
class Ddl:
    """The MySQL script's tables, columns, keys and foreign keys, as written."""

    tables: dict[str, str] = field(default_factory=dict)  # name -> table options
    columns: list[Column] = field(default_factory=list)
    keys: list[Key] = field(default_factory=list)  # primary keys, unique keys, indexes
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    names: list[tuple[str, str, bool]] = field(default_factory=list)  # (where, identifier, quoted)

    def column(self, table: str, name: str) -> Column:
        for column in self.columns:
            if column.table == table and column.name == name:
                return column
        raise AssertionError(f"the script has no column {table}.{name}")


IDENTIFIER = r"`[^`]+`|[A-Za-z_][A-Za-z0-9_$]*"


def _identifier(token: str) -> tuple[str, bool]:
    return (token[1:-1], True) if token.startswith("`") else (token, False)


def _scan(sql: str, start: int = 0):
    """(index, character, depth) of each character of ``sql`` outside quotes, from ``start``;
    depth counts the parentheses open after it."""
    depth, quote = 0, None
    for i in range(start, len(sql)):
        char = sql[i]
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"`":
            quote = char
        else:
            depth += (char == "(") - (char == ")")
            yield i, char, depth


def _split_top_level(body: str) -> list[str]:
    """``body`` split at commas outside parentheses and quotes."""
    cuts = [i for i, char, depth in _scan(body) if char == "," and depth == 0]
    parts = [body[a + 1:b].strip() for a, b in zip([-1, *cuts], [*cuts, len(body)], strict=True)]
    return [p for p in parts if p]


def _matching_paren(sql: str, start: int) -> int:
    for i, char, depth in _scan(sql, start):
        if char == ")" and depth == 0:
            return i
    raise AssertionError(f"unbalanced parentheses in {sql!r}")


def _name_list(ddl: Ddl, where: str, group: str) -> list[str]:
    names = []
    for token in _split_top_level(group):
        name, quoted = _identifier(token.split()[0])
        ddl.names.append((where, name, quoted))
        names.append(name)
    return names


def _column(ddl: Ddl, table: str, definition: str) -> None:
    match = re.match(rf"({IDENTIFIER})\s+([A-Za-z]+(?:\s*\([^)]*\))?)\s*(.*)$", definition, re.S)
    assert match, f"{table}: a column definition not understood: {definition!r}"
    name, quoted = _identifier(match.group(1))
    rest = match.group(3)
    column = Column(table, name, quoted, re.sub(r"\s+", "", match.group(2)).upper(), rest)
    generated = re.match(r"(?:GENERATED\s+ALWAYS\s+)?AS\s*\(", rest, re.I)
    if generated:
        start = generated.end() - 1
        column.generated = rest[start + 1 : _matching_paren(rest, start)]
    ddl.columns.append(column)
    ddl.names.append((f"{table} column", name, quoted))


def _constraint(ddl: Ddl, table: str, item: str) -> bool:
    """Records a table constraint or index item; False if ``item`` is a column definition."""
    name_match = re.match(rf"CONSTRAINT\s+({IDENTIFIER})\s+", item, re.I)
    name = _identifier(name_match.group(1))[0] if name_match else ""
    body = item[name_match.end() :] if name_match else item
    head = re.match(
        r"(PRIMARY\s+KEY|UNIQUE(?:\s+(?:INDEX|KEY))?|INDEX|KEY|FOREIGN\s+KEY|CHECK)"
        rf"(?:\s+({IDENTIFIER}))?\s*\(",
        body,
        re.I,
    )
    if not head:
        assert not name_match, f"{table}: a constraint not understood: {item!r}"
        return False
    kind = head.group(1).upper()
    if head.group(2) and not name:
        name = _identifier(head.group(2))[0]
    start = head.end() - 1
    group = body[start + 1 : _matching_paren(body, start)]
    if kind == "CHECK":
        return True
    columns = _name_list(ddl, f"{table} {name or kind}", group)
    if kind.startswith("FOREIGN"):
        ddl.foreign_keys.append(ForeignKey(table, name, columns, body[_matching_paren(body, start) + 1 :].upper()))
    else:
        ddl.keys.append(Key(table, name or kind, columns))
    return True


def parse_mysql_ddl(script: str) -> Ddl:
    ddl = Ddl()
    for statement in statements(script):
        create = re.match(rf"CREATE\s+TABLE\s+({IDENTIFIER})\s*\(", statement, re.I)
        alter = re.match(rf"ALTER\s+TABLE\s+({IDENTIFIER})\s+(.*)$", statement, re.I | re.S)
        index = re.match(rf"CREATE\s+(?:UNIQUE\s+)?INDEX\s+({IDENTIFIER})\s+ON\s+({IDENTIFIER})\s*\(", statement, re.I)
        if create:
            table, quoted = _identifier(create.group(1))
            ddl.names.append(("table", table, quoted))
            start = create.end() - 1
            end = _matching_paren(statement, start)
            ddl.tables[table] = statement[end + 1 :].strip()
            for item in _split_top_level(statement[start + 1 : end]):
                if not _constraint(ddl, table, item):
                    _column(ddl, table, item)
        elif alter:
            table = _identifier(alter.group(1))[0]
            for item in _split_top_level(alter.group(2)):
                added = re.match(r"ADD\s+(?:COLUMN\s+)?", item, re.I)
                # A later migration's column change is a column definition too (0012's LONGTEXT)
                changed = re.match(rf"(?:MODIFY\s+(?:COLUMN\s+)?|CHANGE\s+(?:COLUMN\s+)?(?:{IDENTIFIER})\s+)",
                                   item, re.I)
                assert added or changed or re.match(r"(DROP|ALTER|RENAME)\b", item, re.I), (
                    f"{table}: an ALTER TABLE item not understood: {item!r}"
                )
                if added and not _constraint(ddl, table, item[added.end() :]):
                    _column(ddl, table, item[added.end() :])
                elif changed:
                    _column(ddl, table, item[changed.end() :])
        elif index:
            table = _identifier(index.group(2))[0]
            name = _identifier(index.group(1))[0]
            start = index.end() - 1
            group = statement[start + 1 : _matching_paren(statement, start)]
            ddl.keys.append(Key(table, name, _name_list(ddl, f"{table} {name}", group)))
    return ddl


@pytest.fixture(scope="module")
def mysql_script() -> str:
    return upgrade_script("mysql://billing@db.example/panel")


@pytest.fixture(scope="module")
def mysql_ddl(mysql_script) -> Ddl:
    return parse_mysql_ddl(mysql_script)


def test_the_parser_sees_every_table_and_column_of_the_models(mysql_ddl):
    # Guards the checks below: a statement the parser skipped would be a statement left unchecked.
    for table in Base.metadata.tables.values():
        assert table.name in mysql_ddl.tables
        for column in table.columns:
            mysql_ddl.column(table.name, column.name)


def test_every_mysql_table_is_innodb_with_the_mysql_8_collation(mysql_script, mysql_ddl):
    assert MARIADB_COLLATION not in mysql_script
    wrong = {
        name: options
        for name, options in mysql_ddl.tables.items()
        if "ENGINE=InnoDB" not in options or f"COLLATE={MYSQL_COLLATION}" not in options
    }
    assert wrong == {}


def test_the_mysql_script_has_no_returning(mysql_script):
    assert not re.search(r"\bRETURNING\b", mysql_script, re.I)


def unquoted_reserved_words(ddl: Ddl) -> list[str]:
    return sorted(
        f"{where}: {name}" for where, name, quoted in ddl.names if not quoted and name.lower() in RESERVED_WORDS_MYSQL
    )


def test_no_mysql_8_reserved_word_is_an_unquoted_name(mysql_ddl):
    assert unquoted_reserved_words(mysql_ddl) == []


def test_the_reserved_word_check_sees_an_unquoted_last_value():
    # The bug of migration 0001 before it quoted `last_value` (a window function on MySQL 8.0.2+).
    ddl = parse_mysql_ddl(
        "CREATE TABLE billingworker_sequences (name VARCHAR(64) NOT NULL PRIMARY KEY,"
        " last_value BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB;"
    )

    assert unquoted_reserved_words(ddl) == ["billingworker_sequences column: last_value"]


TEXT_TYPES = set("TINYTEXT TEXT MEDIUMTEXT LONGTEXT TINYBLOB BLOB MEDIUMBLOB LONGBLOB JSON GEOMETRY".split())


def literal_defaults_of_text_columns(ddl: Ddl) -> list[str]:
    """MySQL 8 refuses a literal DEFAULT on these types (error 1101); an expression ``DEFAULT ('')`` is allowed."""
    found = []
    for column in ddl.columns:
        default = re.search(r"\bDEFAULT\s+([^\s(]\S*)", column.rest, re.I)
        if default and re.sub(r"\(.*", "", column.type) in TEXT_TYPES:
            found.append(f"{column.table}.{column.name} {column.type} DEFAULT {default.group(1)}")
    return sorted(found)


def test_no_text_column_has_a_literal_default(mysql_ddl):
    # (the schema had 23 such columns, all TEXT with '' / '{}' / '[]': mysql_ddl now writes them
    # as expressions, DEFAULT (''), on MySQL 8)
    assert literal_defaults_of_text_columns(mysql_ddl) == []


#: The bytes of a fixed-size MySQL type (DATETIME(6): 5 + 3 for the microseconds).
FIXED_BYTES = dict(
    TINYINT=1, BOOL=1, BOOLEAN=1, SMALLINT=2, MEDIUMINT=3, INT=4, INTEGER=4, BIGINT=8,
    DATE=3, DATETIME=8, TIMESTAMP=7, FLOAT=4, DOUBLE=8,
)  # fmt: skip


def _column_bytes(type_: str) -> int:
    """The most bytes a column of this MySQL type takes in an InnoDB key."""
    name, _, args = type_.partition("(")
    numbers = [int(n) for n in re.findall(r"\d+", args)]
    if name in ("VARCHAR", "CHAR", "VARBINARY", "BINARY"):
        return numbers[0] * (UTF8MB4_BYTES if "CHAR" in name else 1)
    if name in FIXED_BYTES:
        return FIXED_BYTES[name]
    if name in ("NUMERIC", "DECIMAL"):
        return (numbers[0] + 8) // 9 * 4 + 1  # 4 bytes per 9 digits, at most, plus a part-group
    raise AssertionError(f"a key over a {type_} column (TEXT/BLOB need a prefix length on MySQL)")


def oversized_keys(ddl: Ddl) -> list[str]:
    return sorted(
        f"{key.table}.{key.name}: {total} bytes"
        for key in ddl.keys
        if (total := sum(_column_bytes(ddl.column(key.table, c).type) for c in key.columns)) > INNODB_MAX_KEY_BYTES
    )


def test_every_key_of_the_script_fits_innodb(mysql_ddl):
    # MariaDB quietly makes a too-long UNIQUE key a hash index; MySQL 8 refuses it (error 1071).
    assert oversized_keys(mysql_ddl) == []


def test_every_key_of_the_models_fits_innodb():
    def column_bytes(column) -> int:
        type_ = getattr(column.type, "impl", column.type)  # a TypeDecorator (UtcTimestamp): its stored type
        if isinstance(type_, String):
            assert type_.length, f"{column.table.name}.{column.name}: a key over a string of no length"
            return type_.length * UTF8MB4_BYTES
        for kind, size in ((Boolean, 1), (DateTime, 8), (Date, 3), (Numeric, 9), (Integer, 8)):
            if isinstance(type_, kind):
                return size
        raise AssertionError(f"{column.table.name}.{column.name}: {column.type} in a key")

    too_long = []
    for table in Base.metadata.tables.values():
        keys = [
            table.primary_key,
            *table.indexes,
            *(c for c in table.constraints if c.__class__.__name__ == "UniqueConstraint"),
        ]
        for key in keys:
            total = sum(column_bytes(c) for c in key.columns)
            if total > INNODB_MAX_KEY_BYTES:
                too_long.append(f"{table.name}.{key.name}: {total} bytes")
    assert too_long == []


def cascading_foreign_keys_on_generated_bases(ddl: Ddl) -> list[str]:
    """MySQL 8 refuses a foreign key with CASCADE / SET NULL / SET DEFAULT on a base column of a
    stored generated column (error 3104 and kin); MariaDB 10.11 accepts it. An indexed VIRTUAL
    one is allowed (MySQL's own test suite, Bug#22469130, cascades through one)."""
    found = []
    for column in ddl.columns:
        if column.generated is None or "VIRTUAL" in column.rest.upper():
            continue
        bases = {
            c.name
            for c in ddl.columns
            if c.table == column.table
            and re.search(rf"(?<![\w`]){re.escape(c.name)}(?![\w`])|`{re.escape(c.name)}`", column.generated)
        }
        for fk in ddl.foreign_keys:
            action = re.search(r"ON\s+(?:DELETE|UPDATE)\s+(CASCADE|SET\s+NULL|SET\s+DEFAULT)", fk.actions)
            shared = sorted(bases & set(fk.columns))
            if fk.table == column.table and shared and action:
                found.append(f"{fk.table}.{fk.name} ({', '.join(shared)} {action.group(0)}) under {column.name}")
    return sorted(found)


def test_no_cascading_foreign_key_on_a_base_column_of_a_generated_column(mysql_ddl):
    assert cascading_foreign_keys_on_generated_bases(mysql_ddl) == []


@pytest.mark.parametrize(("mariadb", "expected"), [(False, "DEFAULT ('none')"), (True, "DEFAULT 'none'")],
                         ids=["mysql8", "mariadb"])
def test_a_later_migration_changing_a_text_default_is_spelled_for_mysql_8(mariadb, expected):
    # Alembic writes MODIFY / CHANGE / ALTER COLUMN ... SET DEFAULT itself, past the hook that
    # spells CREATE TABLE and ADD COLUMN: store/mysql_alter_ddl.py gives them MySQL 8's spelling.
    from alembic.ddl.mysql import MySQLAlterDefault, MySQLChangeColumn, MySQLModifyColumn
    from sqlalchemy import Text
    from sqlalchemy.dialects import mysql

    import billingworker.store.mysql_alter_ddl  # noqa: F401 - as migrations/env.py loads it
    from billingworker.store.mysql_ddl import use_types_of

    use_types_of(Base.metadata)
    dialect = mysql.dialect()
    dialect.is_mariadb = mariadb
    changes = [
        MySQLModifyColumn("payment_captures", "error", type_=Text(), default="none", nullable=True, comment=None),
        MySQLChangeColumn("payment_captures", "error", newname="error", type_=Text(), default="none",
                          nullable=True, comment=None),
        MySQLAlterDefault("payment_captures", "error", default="none"),  # no type: the models' TEXT
    ]
    for change in changes:
        assert expected in str(change.compile(dialect=dialect))
    # a VARCHAR keeps its literal default on both
    varchar = MySQLAlterDefault("payment_captures", "gateway", default="none")
    assert str(varchar.compile(dialect=dialect)).endswith("SET DEFAULT 'none'")


def test_the_generated_columns_are_those_of_the_partial_indexes(mysql_ddl):
    # The check above looks at the generated columns the script has: they must be all of them.
    expected = {
        (table.name, name)
        for table in Base.metadata.tables.values()
        for index in table.indexes
        if index.unique and partial_where(index) is not None
        for name in generated_key_columns(index.name, len(index.columns))
    }
    assert {(c.table, c.name) for c in mysql_ddl.columns if c.generated is not None} == expected
    # VIRTUAL on MySQL 8: the CASCADE foreign keys of pay_methods.client_id and
    # payment_captures.invoice_id are refused on a base column of a STORED one
    assert all("VIRTUAL" in c.rest.upper() for c in mysql_ddl.columns if c.generated is not None)


#: Functions a generated column may not use (MySQL: "non-deterministic"), and other things it may not hold.
NOT_DETERMINISTIC = set(
    """
    now current_timestamp current_date current_time curdate curtime sysdate localtime localtimestamp
    utc_date utc_time utc_timestamp unix_timestamp rand uuid uuid_short connection_id current_user user
    session_user system_user database schema version last_insert_id found_rows row_count sleep get_lock
    release_lock is_free_lock is_used_lock benchmark select values nextval lastval
""".split()
)


def test_the_generated_columns_are_deterministic(mysql_ddl):
    generated = [c for c in mysql_ddl.columns if c.generated is not None]
    assert generated
    for column in generated:
        unquoted = re.sub(r"'[^']*'|`[^`]*`", "", column.generated)
        words = {w.lower() for w in re.findall(r"[A-Za-z_]\w*", unquoted)}
        assert words & NOT_DETERMINISTIC == set(), column
        assert "@" not in unquoted, column  # no variables


# -- c. the MySQL 8 script on a real server, as far as MariaDB can tell ---------------------------


@needs_mariadb
def test_the_mysql_script_runs_on_mariadb_with_its_collation(fresh_mariadb, mysql8_forms_url, mysql_script):
    # MariaDB 10.11 has no utf8mb4_0900_bin (binary and no-pad too): the one word swapped.
    run_script(fresh_mariadb, mysql_script.replace(MYSQL_COLLATION, MARIADB_COLLATION))

    assert models_diff(fresh_mariadb) == []
    assert current_revision(fresh_mariadb) == HEAD
    # the same schema as `db upgrade` makes where the DDL is spelled for MySQL 8 (the test runs'
    # mysql8-forms database: VIRTUAL key columns, TEXT defaults as expressions)
    online = create_db_engine(mysql8_forms_url)
    try:
        assert snapshot(fresh_mariadb) == snapshot(online)
    finally:
        online.dispose()


# -- d. the command ------------------------------------------------------------------------------


def test_db_upgrade_sql_prints_the_mysql_8_script_without_connecting():
    # Nothing listens at port 1: the script comes without a connection.
    result = CliRunner().invoke(
        main, ["db", "upgrade", "--sql"], env={"DATABASE_URL": "mysql://billing:secret@127.0.0.1:1/panel"}
    )

    assert result.exit_code == 0, result.output
    assert "CREATE TABLE invoices (" in result.output
    assert f"COLLATE={MYSQL_COLLATION}" in result.output
    assert f"UPDATE alembic_version SET version_num='{HEAD}'" in result.output
    assert "secret" not in result.output


def test_db_upgrade_sql_from_a_revision_prints_only_what_follows():
    result = CliRunner().invoke(
        main,
        ["db", "upgrade", "--sql", "--from", "0010", "--to", "0011"],
        env={"DATABASE_URL": "mariadb://billing@127.0.0.1:1/panel"},
    )

    assert result.exit_code == 0, result.output
    assert "CREATE TABLE daily_run_reconciliations" in result.output
    assert "CREATE TABLE invoices" not in result.output
    assert "CREATE TABLE alembic_version" not in result.output


def test_db_upgrade_sql_refuses_sqlite_with_the_reason(tmp_path):
    database = tmp_path / "billing.sqlite3"

    result = CliRunner().invoke(main, ["db", "upgrade", "--sql"], env={"DATABASE_URL": f"sqlite:///{database}"})

    assert result.exit_code == 1
    assert "no SQL script for SQLite" in result.output
    assert "without --sql" in result.output
    assert not database.exists()


@pytest.mark.parametrize("args", [["--sql", "--from", "0999"], ["--from", "0001"]])
def test_db_upgrade_refuses_a_wrong_revision_range(args):
    result = CliRunner().invoke(
        main, ["db", "upgrade", *args], env={"DATABASE_URL": "mysql://billing@127.0.0.1:1/panel"}
    )

    assert result.exit_code == 2
    assert "--from" in result.output
