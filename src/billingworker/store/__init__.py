"""Dialect-specific SQL in one place: COPY, array parameters, ``RETURNING`` in bulk.

The domain states what to write; this package knows how each database does it fast (PostgreSQL
through psycopg, SQLite through plain statements). The seam a third database plugs into.
"""
