"""claims with leases for several nodes on one database: jobs and outbox rows carry who claimed them and until when;
jobs a fencing token; cluster_settings holds the spool identity

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('claim_token', sa.Integer(), nullable=False, server_default='0'))
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column('lease_until', sa.DateTime(), nullable=True))
    op.create_table(
        'cluster_settings',
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('value', sa.String(length=512), nullable=False),
        sa.PrimaryKeyConstraint('key', name=op.f('pk_cluster_settings')),
    )


def downgrade() -> None:
    op.drop_table('cluster_settings')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('lease_until')
        batch_op.drop_column('claimed_by')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('claim_token')
        batch_op.drop_column('lease_until')
        batch_op.drop_column('claimed_by')
