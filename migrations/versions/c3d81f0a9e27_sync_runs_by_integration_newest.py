"""Sync runs by integration, newest first: Sync history's page of the newest runs without sorting all of them

Revision ID: c3d81f0a9e27
Revises: b7e4a91c2d05
Create Date: 2026-11-30 17:40:00

On PostgreSQL the index is built concurrently, so sync workers keep writing runs while it is built.
"""
import sqlalchemy as sa
from alembic import op

revision = 'c3d81f0a9e27'
down_revision = 'b7e4a91c2d05'
branch_labels = None
depends_on = None

NAME = 'ix_sync_runs_integration_newest'
# True when a build of the index was cut short (CREATE INDEX CONCURRENTLY interrupted): PostgreSQL keeps it, invalid.
INVALID = sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)")


def upgrade():
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            if op.get_bind().execute(INVALID, {"name": NAME}).scalar():  # built again, not taken as built
                op.drop_index(NAME, table_name='sync_runs', postgresql_concurrently=True)
            op.create_index(NAME, 'sync_runs', ['integration_id', 'id'], unique=False,
                            postgresql_concurrently=True, if_not_exists=True)
    else:
        with op.batch_alter_table('sync_runs', schema=None) as batch_op:
            batch_op.create_index(NAME, ['integration_id', 'id'], unique=False)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            op.drop_index(NAME, table_name='sync_runs', postgresql_concurrently=True, if_exists=True)
    else:
        with op.batch_alter_table('sync_runs', schema=None) as batch_op:
            batch_op.drop_index(NAME)
