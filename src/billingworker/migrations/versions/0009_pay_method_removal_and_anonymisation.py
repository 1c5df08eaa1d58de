"""pay-method removal and anonymisation: why a removal was refused, when a client was anonymised

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 16:00:00

Additive: ``pay_methods.removal_error`` (text, '' by default) and ``pay_methods.removal_attempted_at``
(nullable), written by ``remove_pay_method`` when the gateway refuses, errs or is not active;
``clients.anonymised_at`` (nullable), written by ``anonymise_client``. Existing rows need nothing.
"""

from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('pay_methods', schema=None) as batch_op:
        batch_op.add_column(sa.Column('removal_error', sa.Text(), server_default='', nullable=False))
        batch_op.add_column(sa.Column('removal_attempted_at', sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.add_column(sa.Column('anonymised_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('clients', schema=None) as batch_op:
        batch_op.drop_column('anonymised_at')
    with op.batch_alter_table('pay_methods', schema=None) as batch_op:
        batch_op.drop_column('removal_attempted_at')
        batch_op.drop_column('removal_error')
