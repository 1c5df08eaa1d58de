"""Column types whose spelling differs per database (the models import them from here, so that
the domain names no SQLAlchemy dialect)."""

from __future__ import annotations

from sqlalchemy import Text
from sqlalchemy.dialects import mysql

#: Free text: TEXT, with no limit on PostgreSQL and SQLite; LONGTEXT on MySQL/MariaDB, whose TEXT
#: holds only 65,535 bytes (an accepted email body, stored as escaped JSON, may take 12 bytes a
#: character). Migration 0012.
LONG_TEXT = Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")
