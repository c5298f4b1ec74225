"""The migrations build exactly the schema the models declare, on both backends, and the outbox
migration carries the rows it renames."""
from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from config.settings import get_settings
from tests.webhooks.conftest import postgres_db  # noqa: F401  (a fixture)
from worker.db import migrate
from worker.db.schema import Base


def _drift(url: str) -> list:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": False}), Base.metadata)
    finally:
        engine.dispose()
    return diff


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_migrated_schema_is_the_models_schema(backend, request):
    request.getfixturevalue("db" if backend == "sqlite" else "postgres_db")
    assert _drift(get_settings().database_url) == []


def test_the_outbox_migration_keeps_each_waiting_write_and_escalation(settings_env):
    migrate.upgrade(revision="c404b0be1142")
    engine = create_engine(get_settings().database_url)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO connections (id, name, target, api_url, push_internal_notes, created_at, "
                          "updated_at) VALUES (1, 'acme', 'local', 'https://api.bitbucket.org/2.0', 0, "
                          "'2026-12-01', '2026-12-01')"))
        conn.execute(text("INSERT INTO links (id, connection_id, bitbucket_repo, bitbucket_issue_id, target_id, "
                          "created_at) VALUES (1, 1, 'acme/widgets', 7, '3', '2026-12-01')"))
        conn.execute(text("INSERT INTO outgoing_changes (id, connection_id, link_id, kind, ticket_comment_id, "
                          "state, attempts, created_at) VALUES (5, 1, 1, 'comment', 42, 'pending', 0, '2026-12-01')"))
        conn.execute(text("INSERT INTO tickets (id, title, description, status, priority, type, created_at, "
                          "updated_at) VALUES (3, 't', '', 'open', 'normal', 'problem', '2026-12-01', '2026-12-01')"))
        conn.execute(text("INSERT INTO escalations (id, connection_id, ticket_id, repo, options, state, "
                          "created_at, updated_at) VALUES (2, 1, 3, 'acme/widgets', '{}', 'creating', "
                          "'2026-12-01', '2026-12-01')"))
    migrate.upgrade()
    with engine.connect() as conn:
        row = conn.execute(text("SELECT side, kind, note_id, state FROM outbox WHERE id = 5")).one()
        escalation = conn.execute(text("SELECT item_id, state FROM escalations WHERE id = 2")).one()
        link = conn.execute(text("SELECT target_id FROM links WHERE id = 1")).one()
    engine.dispose()
    assert tuple(row) == ("bitbucket", "comment", "42", "pending")
    assert tuple(escalation) == ("3", "creating") and tuple(link) == ("3",)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_the_oauth_migration_goes_down_and_up_again(backend, request):
    from alembic import command
    from sqlalchemy import inspect
    request.getfixturevalue("db" if backend == "sqlite" else "postgres_db")
    url = get_settings().database_url

    def tables() -> set[str]:
        engine = create_engine(url)
        try:
            return set(inspect(engine).get_table_names())
        finally:
            engine.dispose()
    assert "oauth_authorizations" in tables()
    command.downgrade(migrate.alembic_config(), "0a9ba0a54f86")
    assert "oauth_authorizations" not in tables()
    migrate.upgrade()
    assert "oauth_authorizations" in tables() and _drift(url) == []
