"""free text as LONGTEXT on MySQL/MariaDB, whose TEXT holds only 65,535 bytes

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 23:00:00

A type widening on MySQL and MariaDB only (PostgreSQL's and SQLite's TEXT have no such limit:
nothing changes there). A TEXT column of MySQL holds at most 65,535 bytes, so an input the
worker accepts could fail to fit once written (an email body of 65,536 characters stored as JSON
in ``email_outbox.context``, its rendering in ``email_log``, a merged client's notes, the receipt
of a client deleted with thousands of invoices): a deterministic error that was retried, and
for ``email_log`` an email sent again at each retry. Every free-text column becomes LONGTEXT
(4 GB, the same storage off the row), its nullability and default kept. Other applications read
and write these columns as before.
"""

from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import mysql


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

#: (table, column, nullable, server default) of every free-text column at 0011.
FREE_TEXT = [
    ('client_merges', 'moved', False, '{}'),
    ('console_audit', 'detail', False, ''),
    ('daily_runs', 'summary', False, '{}'),
    ('email_templates', 'body', False, None),
    ('job_failures', 'reason', False, None),
    ('job_receipts', 'result', False, '{}'),
    ('module_commands', 'params', False, '{}'),
    ('module_commands', 'sealed_params', True, None),
    ('module_commands', 'result', False, ''),
    ('settings', 'value', False, None),
    ('clients', 'notes', False, ''),
    ('clients', 'parked_reason', False, ''),
    ('daily_run_reconciliations', 'counts', False, '{}'),
    ('daily_run_reconciliations', 'findings', False, '[]'),
    ('daily_run_tasks', 'batches', False, '[]'),
    ('client_notes', 'note', False, None),
    ('client_users', 'permissions', False, ''),
    ('domains', 'notes', False, ''),
    ('email_outbox', 'context', False, '{}'),
    ('email_outbox', 'last_error', False, ''),
    ('invoices', 'notes', False, ''),
    ('pay_methods', 'removal_error', False, ''),
    ('services', 'notes', False, ''),
    ('addons', 'notes', False, ''),
    ('cancel_requests', 'reason', False, ''),
    ('email_log', 'body_text', False, None),
    ('email_log', 'body_html', False, ''),
    ('email_log', 'to_address', False, None),
    ('email_log', 'cc', False, ''),
    ('invoice_items', 'description', False, None),
    ('payment_captures', 'error', False, ''),
]


def _retype(old, new) -> None:
    if op.get_context().dialect.name not in ('mysql', 'mariadb'):
        return
    for table, column, nullable, default in FREE_TEXT:
        op.alter_column(table, column, type_=new, existing_type=old, existing_nullable=nullable,
                        existing_server_default=default)


def upgrade() -> None:
    _retype(sa.Text(), mysql.LONGTEXT())


def downgrade() -> None:
    _retype(mysql.LONGTEXT(), sa.Text())
