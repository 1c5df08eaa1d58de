"""Schema migrations through Alembic, on SQLite, PostgreSQL and MySQL/MariaDB alike."""

from __future__ import annotations

import io
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from .db import normalise_url

MIGRATIONS = Path(__file__).parent / "migrations"


class ScriptRefused(ValueError):
    """No SQL script for this DATABASE_URL (the message says why and what to do instead)."""


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", normalise_url(url).replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (idempotent: an up-to-date schema is left alone)."""
    command.upgrade(alembic_config(url), revision)


def upgrade_engine(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine.url.render_as_string(hide_password=False))
    with engine.begin() as connection:
        cfg.attributes["connection"] = connection
        command.upgrade(cfg, revision)


def upgrade_script(url: str, to: str = "head", from_: str | None = None) -> str:
    """The SQL that ``upgrade(url, to)`` would run, spelled for the URL's dialect, written without
    connecting (Alembic's offline mode): from an empty database, or from revision ``from_``.

    ``mysql://`` is spelled for MySQL 8, ``mariadb://`` for MariaDB, ``postgresql://`` for
    PostgreSQL. SQLite is refused (``ScriptRefused``): its batch migrations rebuild a table from
    what they read of it, which needs the database.
    """
    url = normalise_url(url)
    if make_url(url).get_backend_name() == "sqlite":
        raise ScriptRefused(
            "DATABASE_URL is SQLite: no SQL script for SQLite (its migrations rebuild tables "
            "from what they read of the database); run billingworker db upgrade without --sql"
        )
    cfg = alembic_config(url)
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, f"{from_}:{to}" if from_ else to, sql=True)
    return cfg.output_buffer.getvalue()
