"""api tokens

Who may call the HTTP API: tokens stored as their SHA-256, admin or scoped to connections.

Revision ID: acfce557d000
Revises: 9d1e7c3a5b20
Create Date: 2026-12-06 23:48:26.561963
"""
from alembic import op
import sqlalchemy as sa
import worker.db.models


revision = 'acfce557d000'
down_revision = '9d1e7c3a5b20'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('admin', sa.Boolean(), nullable=False),
    sa.Column('read_only', sa.Boolean(), nullable=False),
    sa.Column('created_at', worker.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', worker.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', worker.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name'),
    sa.UniqueConstraint('token_hash')
    )
    op.create_table('api_token_connections',
    sa.Column('token_id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['token_id'], ['api_tokens.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('token_id', 'connection_id')
    )


def downgrade() -> None:
    op.drop_table('api_token_connections')
    op.drop_table('api_tokens')
