"""ticket connection

A ticket made through the API belongs to a connection (the token's), so that a connection-scoped
token sees it and no other does.

Revision ID: 0a9ba0a54f86
Revises: acfce557d000
Create Date: 2026-12-07 00:25:29.813375
"""
from alembic import op
import sqlalchemy as sa


revision = '0a9ba0a54f86'
down_revision = 'acfce557d000'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('connection_id', sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f('ix_tickets_connection_id'), ['connection_id'], unique=False)
        batch_op.create_foreign_key('fk_tickets_connection_id', 'connections', ['connection_id'], ['id'],
                                    ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('tickets', schema=None) as batch_op:
        batch_op.drop_constraint('fk_tickets_connection_id', type_='foreignkey')
        batch_op.drop_index(batch_op.f('ix_tickets_connection_id'))
        batch_op.drop_column('connection_id')
