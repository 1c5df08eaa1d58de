"""console audit: one row per web-console action and sign-in attempt

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 13:10:00

Additive: one new table, written by the console only.
"""

from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_audit',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('username', sa.String(length=100), nullable=False),
        sa.Column('role', sa.String(length=20), server_default='', nullable=False),
        sa.Column('action', sa.String(length=50), nullable=False),
        sa.Column('target', sa.String(length=200), server_default='', nullable=False),
        sa.Column('detail', sa.Text(), server_default='', nullable=False),
        sa.Column('outcome', sa.String(length=20), nullable=False),
        sa.Column('remote_addr', sa.String(length=64), server_default='', nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_console_audit')),
    )
    op.create_index('ix_console_audit_at', 'console_audit', ['at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_console_audit_at', table_name='console_audit')
    op.drop_table('console_audit')
