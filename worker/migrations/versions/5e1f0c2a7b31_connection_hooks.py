"""connection hooks

The webhooks bbsync registers itself: connection_hooks, the connection's public URL for them,
and per secret where it came from and when a rotated-out one stops being accepted.

Revision ID: 5e1f0c2a7b31
Revises: e3b1c7d94a20
Create Date: 2026-12-07 01:50:00
"""
from alembic import op
import sqlalchemy as sa
import worker.db.models


revision = '5e1f0c2a7b31'
down_revision = 'e3b1c7d94a20'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('connection_hooks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('repo', sa.String(length=255), nullable=False),
    sa.Column('hook_uuid', sa.String(length=64), nullable=True),
    sa.Column('secret_id', sa.Integer(), nullable=True),
    sa.Column('updated_at', worker.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['secret_id'], ['webhook_secrets.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('connection_id', 'repo')
    )
    with op.batch_alter_table('connections') as batch:
        batch.add_column(sa.Column('hooks_public_url', sa.String(length=255), nullable=True))
    with op.batch_alter_table('webhook_secrets') as batch:
        batch.add_column(sa.Column('origin', sa.String(length=8), server_default='given', nullable=False))
        batch.add_column(sa.Column('retire_at', worker.db.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('webhook_secrets') as batch:
        batch.drop_column('retire_at')
        batch.drop_column('origin')
    with op.batch_alter_table('connections') as batch:
        batch.drop_column('hooks_public_url')
    op.drop_table('connection_hooks')
