"""Connection kind and the Dynamics 365 online settings of an integration

Revision ID: b7e4a91c2d05
Revises: b16fc7d64191
Create Date: 2026-11-30 07:30:00

"""
import sqlalchemy as sa
from alembic import op

revision = 'b7e4a91c2d05'
down_revision = 'b16fc7d64191'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('crm_integrations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('connection_kind', sa.String(length=20), server_default='onprem', nullable=False))
        batch_op.add_column(sa.Column('environment_url', sa.String(length=500), server_default='', nullable=False))
        batch_op.add_column(sa.Column('tenant_id', sa.String(length=200), server_default='', nullable=False))
        batch_op.add_column(sa.Column('client_id', sa.String(length=100), server_default='', nullable=False))
        batch_op.add_column(sa.Column('client_secret_encrypted', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('client_certificate_encrypted', sa.Text(), nullable=True))


def downgrade():
    with op.batch_alter_table('crm_integrations', schema=None) as batch_op:
        batch_op.drop_column('client_certificate_encrypted')
        batch_op.drop_column('client_secret_encrypted')
        batch_op.drop_column('client_id')
        batch_op.drop_column('tenant_id')
        batch_op.drop_column('environment_url')
        batch_op.drop_column('connection_kind')
