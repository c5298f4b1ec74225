"""outbox claims

An outbox row being written is owned by one attempt until `claimed_until`; `claimed_by` names
the process, so that a claim whose process is gone can be taken over before it lapses. Rows already
`sending` when this runs have no claim: the next push treats them as resumed (it looks for its
marker before writing), which is what every `sending` row meant before.

Revision ID: c404b0be1142
Revises: f556b8dee0c5
Create Date: 2026-12-04 17:02:42.964864
"""
from alembic import op
import sqlalchemy as sa
import worker.db.models


revision = 'c404b0be1142'
down_revision = 'f556b8dee0c5'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outgoing_changes', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claimed_until', worker.db.models.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('outgoing_changes', schema=None) as batch_op:
        batch_op.drop_column('claimed_by')
        batch_op.drop_column('claimed_until')
