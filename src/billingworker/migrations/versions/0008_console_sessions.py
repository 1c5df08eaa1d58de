"""console sessions: one row per signed-in web-console session, deleted at sign-out

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 13:40:00

Additive: one new table, written by the console only.
"""

from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'console_sessions',
        sa.Column('id', sa.String(length=64), nullable=False),
        sa.Column('username', sa.String(length=100), nullable=False),
        sa.Column('signed_in_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_console_sessions')),
    )


def downgrade() -> None:
    op.drop_table('console_sessions')
