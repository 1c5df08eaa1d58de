"""billing day: the generation day recorded on each billed period, unique per thing

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 10:20:00

Additive: a nullable ``billed_periods.billed_on`` (the ``as_of`` of the due-invoice generation
that made the claim; NULL for rows written before and for other paths) and a unique index on
(item_type, item_id, billed_on), so that generation claims at most one period per thing per
billing day. NULLs never clash in a unique index (PostgreSQL, SQLite, MySQL/MariaDB), so the
existing rows and manual invoices are unaffected. Neither step rebuilds the table on SQLite.
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('billed_periods', schema=None) as batch_op:
        batch_op.add_column(sa.Column('billed_on', sa.Date(), nullable=True))
        batch_op.create_index('uq_billed_periods_billing_day', ['item_type', 'item_id', 'billed_on'], unique=True)


def downgrade() -> None:
    with op.batch_alter_table('billed_periods', schema=None) as batch_op:
        batch_op.drop_index('uq_billed_periods_billing_day')
        batch_op.drop_column('billed_on')
