"""verdicts, shadow findings, series acquisition attributes

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shadow', sa.Boolean(), server_default='0', nullable=False))

    op.create_table('verdicts',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('label', sa.String(length=64), nullable=False),
    sa.Column('model', sa.String(length=64), nullable=True),
    sa.Column('model_version', sa.String(length=32), nullable=True),
    sa.Column('present', sa.Boolean(), nullable=False),
    sa.Column('shadow', sa.Boolean(), nullable=False),
    sa.Column('verdict', sa.String(length=16), nullable=False),
    sa.Column('comment', sa.Text(), nullable=True),
    sa.Column('user', sa.String(length=128), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_verdicts_job_id_jobs')),
    sa.ForeignKeyConstraint(['study_id'], ['studies.id'], name=op.f('fk_verdicts_study_id_studies')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_verdicts'))
    )
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.create_index('ix_verdicts_target', ['job_id', 'label', 'model'], unique=False)
        batch_op.create_index(batch_op.f('ix_verdicts_study_id'), ['study_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_verdicts_at'), ['at'], unique=False)

    op.create_table('series_acquisition',
    sa.Column('series_id', sa.Integer(), nullable=False),
    sa.Column('manufacturer', sa.String(length=64), nullable=True),
    sa.Column('model_name', sa.String(length=64), nullable=True),
    sa.Column('kernel', sa.String(length=64), nullable=True),
    sa.Column('slice_thickness_mm', sa.Float(), nullable=True),
    sa.Column('pixel_spacing_mm', sa.Float(), nullable=True),
    sa.Column('head_width_mm', sa.Float(), nullable=True),
    sa.Column('read_at', sa.DateTime(), nullable=False),
    sa.Column('error', sa.String(length=256), nullable=True),
    sa.ForeignKeyConstraint(['series_id'], ['series.id'], name=op.f('fk_series_acquisition_series_id_series')),
    sa.PrimaryKeyConstraint('series_id', name=op.f('pk_series_acquisition'))
    )


def downgrade() -> None:
    op.drop_table('series_acquisition')
    with op.batch_alter_table('verdicts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_verdicts_at'))
        batch_op.drop_index(batch_op.f('ix_verdicts_study_id'))
        batch_op.drop_index('ix_verdicts_target')
    op.drop_table('verdicts')
    with op.batch_alter_table('findings', schema=None) as batch_op:
        batch_op.drop_column('shadow')
