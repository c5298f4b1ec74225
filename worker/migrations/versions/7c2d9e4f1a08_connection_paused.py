"""connection paused

A paused connection stores and acknowledges deliveries and processes nothing until resumed.

Revision ID: 7c2d9e4f1a08
Revises: 5e1f0c2a7b31
Create Date: 2026-12-07 01:45:00
"""
from alembic import op
import sqlalchemy as sa
import worker.db.models


revision = '7c2d9e4f1a08'
down_revision = '5e1f0c2a7b31'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.add_column(sa.Column('paused_at', worker.db.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('connections') as batch:
        batch.drop_column('paused_at')
