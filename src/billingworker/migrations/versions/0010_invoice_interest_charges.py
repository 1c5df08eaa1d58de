"""invoice interest charges: one row per (invoice, calendar month) of late-fee interest

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-29 16:00:00

Additive: one new table, written by the late-fee task in its ``interest`` mode (SPEC §6). The
``invoice_late_fees`` table and its one-fee-per-invoice primary key are unchanged.
"""

from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'invoice_interest_charges',
        sa.Column('invoice_id', sa.Integer(), nullable=False),
        sa.Column('period_start', sa.Date(), nullable=False),
        sa.Column('first_day', sa.Date(), nullable=False),
        sa.Column('period_end', sa.Date(), nullable=False),
        sa.Column('days', sa.Integer(), nullable=False),
        sa.Column('balance', sa.Numeric(precision=18, scale=4), server_default='0', nullable=False),
        sa.Column('rate', sa.Numeric(precision=12, scale=6), nullable=False),
        sa.Column('amount', sa.Numeric(precision=18, scale=4), server_default='0', nullable=False),
        sa.Column('invoice_item_id', sa.Integer(), nullable=True),
        sa.Column('applied_on', sa.Date(), nullable=False),
        sa.ForeignKeyConstraint(['invoice_id'], ['invoices.id'], ondelete='CASCADE',
                                name=op.f('fk_invoice_interest_charges_invoice_id_invoices')),
        sa.PrimaryKeyConstraint('invoice_id', 'period_start', name=op.f('pk_invoice_interest_charges')),
    )


def downgrade() -> None:
    op.drop_table('invoice_interest_charges')
