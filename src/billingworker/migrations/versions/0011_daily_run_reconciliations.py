"""daily run reconciliations: what the reconciliation found when a daily run finished

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 16:00:00

Additive: one new table, written when a daily run finishes (domain/runs/daily_run.next_step).
"""

from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'daily_run_reconciliations',
        sa.Column('run_id', sa.Integer(), nullable=False),
        sa.Column('as_of', sa.Date(), nullable=False),
        sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('clean', sa.Boolean(), nullable=False),
        sa.Column('counts', sa.Text(), server_default='{}', nullable=False),
        sa.Column('findings', sa.Text(), server_default='[]', nullable=False),
        sa.ForeignKeyConstraint(['run_id'], ['daily_runs.id'], ondelete='CASCADE',
                                name=op.f('fk_daily_run_reconciliations_run_id_daily_runs')),
        sa.PrimaryKeyConstraint('run_id', name=op.f('pk_daily_run_reconciliations')),
    )


def downgrade() -> None:
    op.drop_table('daily_run_reconciliations')
