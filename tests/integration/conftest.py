"""Integration stacks: real processes over real HTTP.

Two stacks, each session-wide:
- `embedded`: SQLite and kombu's filesystem broker, the default a user's fresh machine gets;
- `services`: PostgreSQL and Redis where they answer (TEST_POSTGRES_URL / TEST_REDIS_URL, or
  the local defaults). With CI=true a missing service is a failure, never a skip.
Both run gunicorn for the web app and a `celery worker` process.
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import httpx2
import pytest
from cryptography.fernet import Fernet
from sqlalchemy import Engine, text

from webhooks.signatures import sign
from worker.db.session import make_engine
from devstack.stack import Stack

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _postgres_answers() -> bool:
    import psycopg
    try:
        psycopg.connect(PG_URL, connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


def _redis_answers() -> bool:
    import redis
    try:
        return bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


def require_services() -> None:
    missing = [name for name, ok in (("PostgreSQL", _postgres_answers()), ("Redis", _redis_answers()))
               if not ok]
    if missing:
        message = f"{' and '.join(missing)} not answering ({PG_URL}, {REDIS_URL})"
        if IN_CI:
            pytest.fail(f"CI=true: {message}; .ci/run must start them", pytrace=False)
        pytest.skip(message)


def _create_database() -> tuple[str, Callable[[], None]]:
    """A fresh PostgreSQL database for this test session, dropped at the end."""
    import psycopg
    name = f"bbsync_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _db = PG_URL.rpartition("/")

    def drop() -> None:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    return f"{base}/{name}", drop


@dataclass
class Running:
    """A started stack, with the few helpers every integration test needs."""

    kind: str
    stack: Stack
    web_url: str
    engine: Engine
    _token: str | None = None

    @property
    def auth(self) -> dict[str, str]:
        """The headers of an admin API token, made (as a user would) on first use."""
        if self._token is None:
            made = self.stack.run("token", "create", f"tests-{uuid.uuid4().hex[:8]}", "--admin")
            self._token = made.stdout.strip().splitlines()[-1]
        return {"Authorization": f"Bearer {self._token}"}

    def add_connection(self, repos: list[str], secret: str | None = None,
                       name: str | None = None) -> tuple[str, str]:
        name = name or f"c{uuid.uuid4().hex[:12]}"
        secret = secret or "s3cret-" + uuid.uuid4().hex
        args = ["connection", "add", name, "--webhook-secret", secret]
        for repo in repos:
            args += ["--repo", repo]
        self.stack.run(*args)
        return name, secret

    def deliver(self, connection: str, event_key: str, body: bytes, secret: str | None,
                request_uuid: str | None = None, **headers: str) -> httpx2.Response:
        h = {"Content-Type": "application/json", "User-Agent": "Bitbucket-Webhooks/2.0",
             "X-Event-Key": event_key, "X-Request-UUID": request_uuid or str(uuid.uuid4()),
             "X-Hook-UUID": str(uuid.uuid4()), "X-Attempt-Number": "1"}
        if secret is not None:
            h["X-Hub-Signature"] = sign(secret, body)
        h.update({k.replace("_", "-"): v for k, v in headers.items()})
        return httpx2.post(f"{self.web_url}/webhooks/bitbucket/{connection}", content=body,
                           headers=h, timeout=15)

    def get(self, path: str, **params) -> httpx2.Response:
        headers = self.auth if path.startswith("/api") else None
        return httpx2.get(self.web_url + path, params=params, headers=headers, timeout=15)

    def scalar(self, sql: str, **params):
        with self.engine.connect() as c:
            return c.execute(text(sql), params).scalar()

    def assert_nowhere_in_clear(self, secrets: list[str]) -> None:
        """Not one of `secrets` in any log line of the stack's processes (web, worker,
        commands) or anywhere in the database: every column of every row, text, JSON and
        binary alike (what a dump of it would hold)."""
        from sqlalchemy import inspect, select

        from worker.db.schema import metadata
        logs = "\n".join(p.read_text(errors="replace") for p in self.stack.log_dir.rglob("*.log"))
        assert logs, "no logs were found to scan"
        assert [s for s in secrets if s in logs] == []
        needles = [(s, s.encode()) for s in secrets]
        with self.engine.connect() as c:
            present = set(inspect(c).get_table_names())
            for table in metadata.sorted_tables:
                if table.name not in present:
                    continue
                for row in c.execute(select(*table.columns)):
                    for value in row:
                        if value is None:
                            continue
                        if isinstance(value, (bytes, memoryview)):
                            found = [s for s, raw in needles if raw in bytes(value)]
                        else:
                            found = [s for s, _ in needles if s in str(value)]
                        assert found == [], table.name

    def wait_processed(self, delivery_id: str, timeout: float = 30.0) -> str:
        """Wait until the worker has finished a delivery; returns its final status."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.scalar("select status from deliveries where id = :id", id=delivery_id)
            if status not in (None, "received"):
                return status
            time.sleep(0.05)
        raise AssertionError(f"delivery {delivery_id} was not processed within {timeout:.0f} s "
                             f"(worker log: {self.stack.log_dir})")


def _start(kind: str, tmp: Path) -> tuple[Running, Callable[[], None]]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL", "PORT")}
    env.update(BBSYNC_VAR_DIR=str(tmp / "var"), BBSYNC_SECRET_KEYS=Fernet.generate_key().decode(),
               BBSYNC_QUEUE=f"bbsync-test-{uuid.uuid4().hex[:8]}")
    cleanup: list[Callable[[], None]] = []
    if kind == "services":
        require_services()
        db_url, drop = _create_database()
        cleanup.append(drop)
        env.update(DATABASE_URL=db_url, REDIS_URL=REDIS_URL)
    else:
        db_url = f"sqlite:///{tmp / 'var' / 'bbsync.db'}"
    stack = Stack(env=env, log_dir=tmp)
    stack.run("db", "upgrade")
    stack.start_worker()
    web_url = stack.start_web()
    engine = make_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))

    def stop() -> None:
        stack.close()
        engine.dispose()
        for fn in cleanup:
            fn()
    return Running(kind, stack, web_url, engine), stop


@pytest.fixture(scope="session", params=["embedded", "services"])
def running(request, tmp_path_factory) -> Running:
    run, stop = _start(request.param, tmp_path_factory.mktemp(request.param))
    request.addfinalizer(stop)
    return run


@pytest.fixture(scope="module")
def simulator():
    """The Bitbucket simulator on a loopback port (its webhooks reach the stacks over HTTP)."""
    from tests.integration.simulator_server import serve_simulator
    with serve_simulator() as sim:
        yield sim
