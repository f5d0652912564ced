"""Sync runs by integration and id: Sync history's page of the newest runs without sorting all of them

Revision ID: c3d81f0a9e27
Revises: b7e4a91c2d05
Create Date: 2026-11-30 17:40:00

"""
from alembic import op

revision = 'c3d81f0a9e27'
down_revision = 'b7e4a91c2d05'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.create_index('ix_sync_runs_integration_id', ['integration_id', 'id'], unique=False)


def downgrade():
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_sync_runs_integration_id')
