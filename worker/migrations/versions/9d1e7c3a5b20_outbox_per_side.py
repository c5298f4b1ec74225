"""outbox per side

The outbox (was `outgoing_changes`) names the side each write goes to, Bitbucket or a remote
target, and the note it copies by a string id (was `ticket_comment_id`, a built-in helpdesk
comment's integer id). A link's target id may be empty while a remote target creates the item.
Every existing row is a write to Bitbucket. An escalation names its ticket as the target side
does (`item_id`, a string; was `ticket_id`, a foreign key to the built-in helpdesk's tickets),
and its claim names its holder (`claimed_by`), as an outbox row's does.

Revision ID: 9d1e7c3a5b20
Revises: c404b0be1142
Create Date: 2026-12-04 20:55:00
"""
from alembic import op
import sqlalchemy as sa


revision = '9d1e7c3a5b20'
down_revision = 'c404b0be1142'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.rename_table('outgoing_changes', 'outbox')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outgoing_link_state')
        batch_op.add_column(sa.Column('side', sa.String(length=16), nullable=False, server_default='bitbucket'))
        batch_op.add_column(sa.Column('note_id', sa.String(length=64), nullable=True))
    op.execute("UPDATE outbox SET note_id = CAST(ticket_comment_id AS VARCHAR(64)) "
               "WHERE ticket_comment_id IS NOT NULL")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('ticket_comment_id')
        batch_op.create_index('ix_outbox_link_state', ['link_id', 'state'], unique=False)
    with op.batch_alter_table('links', schema=None) as batch_op:
        batch_op.alter_column('target_id', existing_type=sa.String(length=64), nullable=True)

    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('item_id', sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column('claimed_by', sa.String(length=200), nullable=True))
    op.execute("UPDATE escalations SET item_id = CAST(ticket_id AS VARCHAR(64))")
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.drop_constraint('uq_escalation_ticket', type_='unique')
        batch_op.drop_column('ticket_id')  # and with it, its foreign key to tickets
        batch_op.alter_column('item_id', existing_type=sa.String(length=64), nullable=False)
        batch_op.create_unique_constraint('uq_escalation_item', ['connection_id', 'item_id'])


def downgrade() -> None:
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.add_column(sa.Column('ticket_id', sa.Integer(), nullable=True))
    op.execute("UPDATE escalations SET ticket_id = CAST(item_id AS INTEGER)")
    with op.batch_alter_table('escalations', schema=None) as batch_op:
        batch_op.drop_constraint('uq_escalation_item', type_='unique')
        batch_op.drop_column('item_id')
        batch_op.drop_column('claimed_by')
        batch_op.alter_column('ticket_id', existing_type=sa.Integer(), nullable=False)
        batch_op.create_foreign_key('escalations_ticket_id_fkey', 'tickets', ['ticket_id'], ['id'],
                                    ondelete='CASCADE')
        batch_op.create_unique_constraint('uq_escalation_ticket', ['connection_id', 'ticket_id'])
    with op.batch_alter_table('links', schema=None) as batch_op:
        batch_op.alter_column('target_id', existing_type=sa.String(length=64), nullable=False)
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_link_state')
        batch_op.add_column(sa.Column('ticket_comment_id', sa.Integer(), nullable=True))
    op.execute("DELETE FROM outbox WHERE side <> 'bitbucket'")
    op.execute("UPDATE outbox SET ticket_comment_id = CAST(note_id AS INTEGER) WHERE note_id IS NOT NULL")
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('note_id')
        batch_op.drop_column('side')
        batch_op.create_index('ix_outgoing_link_state', ['link_id', 'state'], unique=False)
    op.rename_table('outbox', 'outgoing_changes')
