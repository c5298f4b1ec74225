"""oauth authorizations

OAuth 2.0 authorization-code connects under way (`bbsync connection oauth`): the one-time link
and the state as SHA-256, the consumer secret and PKCE verifier encrypted.

Revision ID: e3b1c7d94a20
Revises: 0a9ba0a54f86
Create Date: 2026-12-08 10:12:41.204517
"""
from alembic import op
import sqlalchemy as sa
import worker.db.models


revision = 'e3b1c7d94a20'
down_revision = '0a9ba0a54f86'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('oauth_authorizations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('connection_id', sa.Integer(), nullable=False),
    sa.Column('link_hash', sa.String(length=64), nullable=False),
    sa.Column('state_hash', sa.String(length=64), nullable=True),
    sa.Column('client_id', sa.String(length=200), nullable=False),
    sa.Column('secret', sa.LargeBinary(), nullable=False),
    sa.Column('redirect_uri', sa.String(length=2100), nullable=False),
    sa.Column('created_at', worker.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('expires_at', worker.db.models.UTCDateTime(timezone=True), nullable=False),
    sa.Column('opened_at', worker.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.Column('used_at', worker.db.models.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['connection_id'], ['connections.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('link_hash'),
    sa.UniqueConstraint('state_hash')
    )
    op.create_index(op.f('ix_oauth_authorizations_connection_id'), 'oauth_authorizations',
                    ['connection_id'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_oauth_authorizations_connection_id'), table_name='oauth_authorizations')
    op.drop_table('oauth_authorizations')
