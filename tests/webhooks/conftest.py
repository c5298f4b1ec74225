"""Fixtures for the web process's tests that need a real PostgreSQL."""
from __future__ import annotations

import os
import uuid

import pytest

from tests.conftest import _clear_caches

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture
def postgres_db(settings_env, monkeypatch):
    """A fresh, migrated PostgreSQL database as the app's DATABASE_URL."""
    import psycopg
    try:
        psycopg.connect(PG_URL, connect_timeout=2).close()
    except psycopg.OperationalError:
        if IN_CI:
            pytest.fail(f"CI=true: PostgreSQL not answering at {PG_URL}", pytrace=False)
        pytest.skip(f"PostgreSQL not answering at {PG_URL}")
    name = f"bbsync_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    monkeypatch.setenv("DATABASE_URL", PG_URL.rpartition("/")[0] + "/" + name)
    _clear_caches()
    from worker.db import migrate
    migrate.upgrade()
    yield name
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
