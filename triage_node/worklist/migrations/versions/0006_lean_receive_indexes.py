"""lean receive indexes: drop two indexes that every received instance paid for and no query needs

- ``ix_instances_sop_instance_uid``: the unique (sop_instance_uid, sha256) index starts with the same column and
  serves every lookup by SOP Instance UID.
- ``ix_series_last_received_at``: no query needs it (completion walks the series in RECEIVING by ``state``;
  retention scans the series table). Indexed, every receive group's update of the series row had to add an entry to
  each of the table's five indexes; unindexed, PostgreSQL makes it a heap-only (HOT) update.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 23:00:00
"""

from __future__ import annotations

from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_sop_instance_uid'))
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_last_received_at'))


def downgrade() -> None:
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_last_received_at'), ['last_received_at'], unique=False)
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_sop_instance_uid'), ['sop_instance_uid'], unique=False)
