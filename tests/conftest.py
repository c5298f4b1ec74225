"""Shared fixtures. Unit tests run on a throwaway SQLite file with settings read from a clean
environment; integration tests (tests/integration) start real processes on top of this."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, settings

FIXTURES = Path(__file__).parent / "fixtures"

# The machines these run on are shared and busy: a slow draw or a slow example is the
# machine's doing, not a finding. Correctness properties only; timings live in bench/.
settings.register_profile("shared-machine", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("shared-machine")


def load_fixture(name: str) -> bytes:
    """A captured Bitbucket webhook body, byte for byte (signatures are over raw bytes)."""
    return (FIXTURES / "webhooks" / f"{name}.json").read_bytes()


def fixture_json(name: str) -> dict:
    return json.loads(load_fixture(name))


def _clear_caches() -> None:
    from config.settings import get_settings
    from worker import crypto
    get_settings.cache_clear()
    crypto._cipher.cache_clear()


@pytest.fixture
def settings_env(tmp_path, monkeypatch):
    """A private var dir, SQLite database and encryption key for this test."""
    for name in ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "PORT", "BBSYNC_QUEUE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BBSYNC_VAR_DIR", str(tmp_path / "var"))
    monkeypatch.setenv("BBSYNC_SECRET_KEYS", Fernet.generate_key().decode())
    _clear_caches()
    yield tmp_path
    _clear_caches()


@pytest.fixture
def db(settings_env):
    """A migrated SQLite database (through Alembic, so the migrations are tested too)."""
    from config.settings import get_settings
    from worker.db import migrate
    migrate.upgrade()
    return get_settings().database_url


@pytest.fixture
def session(db):
    from worker.db.session import session_factory
    with session_factory(db)() as s:
        yield s


def authorized(client, name: str = "tests", **scope):
    """A Flask test client that sends an API token made for it in the current database (an
    admin token unless `connection_names=(...)` and/or `read_only=True` are given)."""
    from worker import tokens
    from worker.db.session import transaction
    scope.setdefault("admin", not scope.get("connection_names"))
    with transaction() as session:
        token = tokens.create(session, name, **scope)
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client
