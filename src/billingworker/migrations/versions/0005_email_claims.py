"""email claims: a committed ``sending`` claim per outbox row before the mail transport is called

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 09:40:00

Additive: two nullable columns on ``email_outbox`` and one more value of its ``status``
(``sending``, which fits the existing VARCHAR(10)). Applications that read the outbox see
``sending`` while a worker hands a row to the mail server.
"""

from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('email_outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('relayed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('email_outbox', schema=None) as batch_op:
        batch_op.drop_column('relayed_at')
        batch_op.drop_column('claimed_at')
