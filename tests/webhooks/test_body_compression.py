"""Delivery bodies are stored with lz4 on PostgreSQL (migration f556b8dee0c5): the receiver
compresses every body it stores (they are past the 2 KB TOAST threshold), and pglz cost about a
quarter of PostgreSQL's CPU per delivery."""
from __future__ import annotations

import json

from alembic import command
from sqlalchemy import text

from config.settings import get_settings
from webhooks import _receiver_engine
from webhooks.delivery_store import DeliveryWriter
from worker.db import migrate
from worker.db.models import utcnow
from worker.db.session import get_engine

BEFORE = "6b92b8026009"


def _store_big_body(request_uuid: str) -> str:
    # In SQL, not through the models: they may have columns this older schema has not.
    with get_engine().begin() as conn:
        conn.execute(text(
            "insert into connections (name, target, api_url, push_internal_notes, created_at, updated_at) "
            "values ('acme', 'local', 'https://api.bitbucket.org/2.0', false, :now, :now) "
            "on conflict (name) do nothing"), {"now": utcnow()})
        connection_id = conn.execute(text("select id from connections where name = 'acme'")).scalar_one()
    body = json.dumps({"issue": {"content": {"raw": "steps to reproduce " * 400}}})
    assert len(body) > 4000  # past the TOAST threshold: compressed when stored
    writer = DeliveryWriter(_receiver_engine(get_settings().database_url))
    try:
        delivery_id, fresh = writer.write(dict(
            id=request_uuid.replace("-", ""), connection_id=connection_id, request_uuid=request_uuid,
            hook_uuid=None, event_key="issue:created", attempt=1, body=body, status="received",
            error=None, received_at=utcnow(), issue_key="acme/widgets#1", runs=0))
    finally:
        writer.engine.dispose()
    assert fresh
    with get_engine().connect() as conn:
        stored, method = conn.execute(text(
            "select body, pg_column_compression(body) from deliveries where id = :id"),
            {"id": delivery_id}).one()
    assert stored == body
    return method


def test_bodies_are_stored_with_lz4_and_the_downgrade_restores_pglz(postgres_db):
    assert _store_big_body("00000000-0000-4000-8000-000000000001") == "lz4"

    command.downgrade(migrate.alembic_config(), BEFORE)
    assert _store_big_body("00000000-0000-4000-8000-000000000002") == "pglz"

    migrate.upgrade()
    assert _store_big_body("00000000-0000-4000-8000-000000000003") == "lz4"
    with get_engine().connect() as conn:  # older rows keep their compression and still read
        methods = conn.execute(text(
            "select pg_column_compression(body) from deliveries order by request_uuid")).scalars().all()
    assert methods == ["lz4", "pglz", "lz4"]


def test_the_migration_changes_nothing_on_sqlite(db):
    command.downgrade(migrate.alembic_config(), BEFORE)
    migrate.upgrade()
    with get_engine().connect() as conn:
        assert conn.execute(text("select count(*) from deliveries")).scalar_one() == 0
