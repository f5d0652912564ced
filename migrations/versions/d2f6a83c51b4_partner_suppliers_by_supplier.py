"""A supplier's partners by the supplier: its page of partners and their counts without reading every link

Revision ID: d2f6a83c51b4
Revises: c3d81f0a9e27
Create Date: 2026-11-30 21:05:00

The links' key leads with the partner, so a supplier's links were found by reading all of them (every supplier's).
On PostgreSQL the index is built concurrently, so links can be made while it is built.
"""
import sqlalchemy as sa
from alembic import op

revision = 'd2f6a83c51b4'
down_revision = 'c3d81f0a9e27'
branch_labels = None
depends_on = None

NAME = 'ix_partner_suppliers_supplier'
# True when a build of the index was cut short (CREATE INDEX CONCURRENTLY interrupted): PostgreSQL keeps it, invalid.
INVALID = sa.text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:name)")


def upgrade():
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            if op.get_bind().execute(INVALID, {"name": NAME}).scalar():  # built again, not taken as built
                op.drop_index(NAME, table_name='partner_suppliers', postgresql_concurrently=True)
            op.create_index(NAME, 'partner_suppliers', ['supplier_id', 'partner_id'], unique=False,
                            postgresql_concurrently=True, if_not_exists=True)
    else:
        with op.batch_alter_table('partner_suppliers', schema=None) as batch_op:
            batch_op.create_index(NAME, ['supplier_id', 'partner_id'], unique=False)


def downgrade():
    if op.get_bind().dialect.name == 'postgresql':
        with op.get_context().autocommit_block():
            op.drop_index(NAME, table_name='partner_suppliers', postgresql_concurrently=True, if_exists=True)
    else:
        with op.batch_alter_table('partner_suppliers', schema=None) as batch_op:
            batch_op.drop_index(NAME)
