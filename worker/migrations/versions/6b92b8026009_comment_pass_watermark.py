"""comment pass watermark

The hourly comment pass reads from its own watermark, apart from the 5-minute issue pass.

Revision ID: 6b92b8026009
Revises: 135ce232d759
Create Date: 2026-11-29 08:57:28.940435
"""
from alembic import op
import sqlalchemy as sa
import worker.db.models


revision = '6b92b8026009'
down_revision = '135ce232d759'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('reconcile_watermarks', schema=None) as batch_op:
        batch_op.add_column(sa.Column('comments_updated_on', worker.db.models.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('reconcile_watermarks', schema=None) as batch_op:
        batch_op.drop_column('comments_updated_on')
