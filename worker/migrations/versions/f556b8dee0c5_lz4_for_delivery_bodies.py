"""lz4 for delivery bodies

A webhook body is 2-10 KB of JSON, past PostgreSQL's 2 KB TOAST threshold, so every delivery
the receiver stores is compressed on the way in. With the default (pglz) that compression was
about a quarter of PostgreSQL's CPU per delivery; lz4 costs far less for a similar size
(bench/ingest: PostgreSQL 0.174 -> 0.134 ms of CPU per delivery). Rows stored before this
migration keep pglz and read as before: a column's compression applies to new values.

Only on a PostgreSQL built with lz4 (14 and later, --with-lz4); elsewhere, nothing changes.

Revision ID: f556b8dee0c5
Revises: 6b92b8026009
Create Date: 2026-11-29 12:52:53.152758
"""
from alembic import op
import sqlalchemy as sa


revision = 'f556b8dee0c5'
down_revision = '6b92b8026009'
branch_labels = None
depends_on = None


def _lz4_available() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return False
    # default_toast_compression exists from PostgreSQL 14; its allowed values say what the
    # server was built with.
    return bool(bind.execute(sa.text(
        "SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' "
        "AND 'lz4' = ANY(enumvals)")).first())


def upgrade() -> None:
    if _lz4_available():
        op.execute("ALTER TABLE deliveries ALTER COLUMN body SET COMPRESSION lz4")


def downgrade() -> None:
    if _lz4_available():
        op.execute("ALTER TABLE deliveries ALTER COLUMN body SET COMPRESSION pglz")
