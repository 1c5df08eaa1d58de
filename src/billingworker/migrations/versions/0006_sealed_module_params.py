"""sealed module params: secrets of server-module commands stored only sealed, until the command ran

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 11:20:00

Additive: one nullable column on ``module_commands``.
"""

from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('module_commands', schema=None) as batch_op:
        batch_op.add_column(sa.Column('sealed_params', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('module_commands', schema=None) as batch_op:
        batch_op.drop_column('sealed_params')
