"""Fixtures for the web process's tests that need a real PostgreSQL or Redis."""
from __future__ import annotations

import json
import os
import uuid

import pytest
import redis
from celery import Celery

from config.settings import load
from tests.conftest import _clear_caches
from worker.queue.celery_app import celery_config

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


REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def celery_for(env: dict) -> Celery:
    app = Celery("bbsync-test", set_as_current=False)
    app.conf.update(celery_config(load(env)))
    return app


@pytest.fixture
def redis_app(tmp_path):
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError:
        if IN_CI:
            pytest.fail(f"CI=true: Redis not answering at {REDIS_URL}", pytrace=False)
        pytest.skip(f"Redis not answering at {REDIS_URL}")
    queue = f"bbsync-test-{uuid.uuid4().hex[:8]}"
    app = celery_for({"REDIS_URL": REDIS_URL, "BBSYNC_QUEUE": queue, "BBSYNC_VAR_DIR": str(tmp_path)})
    yield app, client, queue
    client.delete(queue)


def queued(client: redis.Redis, queue: str) -> list[dict]:
    """The queue's messages, oldest first (kombu LPUSHes, a worker BRPOPs)."""
    return [json.loads(raw) for raw in reversed(client.lrange(queue, 0, -1))]
