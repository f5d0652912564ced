"""sync watermarks and full resync runs

Revision ID: 7c1e2f9a4b30
Revises: 436679c33309
Create Date: 2026-11-30 07:40:00.000000

"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '7c1e2f9a4b30'
down_revision = '436679c33309'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('sync_watermarks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('integration_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=60), nullable=False),
    sa.Column('modified_on', sa.DateTime(timezone=True), nullable=True),
    sa.Column('read_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('link_id', sa.Integer(), nullable=True),
    sa.Column('link_window', sa.Integer(), nullable=True),
    sa.Column('full_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['integration_id'], ['crm_integrations.id'], name=op.f('fk_sync_watermarks_integration_id_crm_integrations'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sync_watermarks')),
    sa.UniqueConstraint('integration_id', 'name', name='uq_sync_watermarks_integration_name')
    )
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('full', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade():
    with op.batch_alter_table('sync_runs', schema=None) as batch_op:
        batch_op.drop_column('full')
    op.drop_table('sync_watermarks')
