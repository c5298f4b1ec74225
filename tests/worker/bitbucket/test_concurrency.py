"""The budget and the OAuth refresh under concurrent callers, on the embedded SQLite default
and on PostgreSQL (when TEST_POSTGRES_URL, or a local server, answers; skipped otherwise,
except with CI=true, where a missing PostgreSQL is a failure).

Threads with their own sessions are enough to contend for the database's locks: SQLite's
`BEGIN IMMEDIATE`, PostgreSQL's row locks (`FOR UPDATE`, and the upserted budget row)."""
from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import replace

import pytest
from sqlalchemy.orm import sessionmaker

from worker.bitbucket.budget import BudgetMeter
from worker.bitbucket.credentials import CredentialStore, OAuthCredential, oauth_credential
from worker.bitbucket.errors import BudgetExhausted
from worker.db.schema import metadata
from worker.db.session import make_engine

from .helpers import CLIENT_ID, CLIENT_SECRET, FakeClock

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
THREADS = 6


def _postgres_database():
    import psycopg
    try:
        admin = psycopg.connect(PG_URL, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"CI=true: PostgreSQL not answering at {PG_URL}", pytrace=False)
        pytest.skip(f"PostgreSQL not answering at {PG_URL}")
    name = f"bbsync_bitbucket_{uuid.uuid4().hex[:10]}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')

    def drop() -> None:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    url = PG_URL.rpartition("/")[0] + f"/{name}"
    return url.replace("postgresql://", "postgresql+psycopg://", 1), drop


@pytest.fixture(params=["sqlite", "postgresql"])
def db_sessions(request, settings_env):
    drop = None
    if request.param == "sqlite":
        url = f"sqlite:///{settings_env / 'concurrency.db'}"
    else:
        url, drop = _postgres_database()
    engine = make_engine(url)
    try:
        metadata.create_all(engine)
        yield sessionmaker(bind=engine, expire_on_commit=False)
    finally:
        engine.dispose()
        if drop is not None:
            drop()


def run_together(target, count: int = THREADS) -> list:
    """Run `target()` in `count` threads released at once; returns results or exceptions."""
    start = threading.Barrier(count)
    out: list = [None] * count

    def run(i: int) -> None:
        start.wait(timeout=30)
        try:
            out[i] = target()
        except Exception as exc:        # collected for the assertions
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return out


def test_concurrent_callers_never_take_more_than_the_limit(db_sessions):
    clock = FakeClock()
    meter = BudgetMeter(db_sessions, limit=12, soft_limit=12, clock=clock, sleep=clock.sleep)

    def take_three():
        taken = 0
        for _ in range(3):
            try:
                meter.acquire("oauth:shared", max_wait=0)
                taken += 1
            except BudgetExhausted:
                pass
        return taken

    results = run_together(take_three)
    assert all(isinstance(r, int) for r in results), results
    assert sum(results) == 12                 # 18 wanted, exactly the limit granted
    assert meter.used("oauth:shared") == 12


def test_concurrent_refreshes_of_one_credential_happen_once(db_sessions):
    clock = FakeClock()
    cred_id = CredentialStore(db_sessions, clock=clock).add(oauth_credential(
        CLIENT_ID, CLIENT_SECRET, access_token="at-old", refresh_token="rt-old",
        expires_at=clock.now - 5))
    calls: list[str] = []

    def refresher(current: OAuthCredential) -> OAuthCredential:
        calls.append(current.refresh_token)
        time.sleep(0.3)                       # the token endpoint is slow; others queue up
        return replace(current, access_token=f"at-{len(calls)}",
                       refresh_token=f"rt-{len(calls)}", expires_at=clock.now + 3600)

    def refresh():
        store = CredentialStore(db_sessions, clock=clock)      # one per "process"
        return store.refresh_oauth(cred_id, refresher).access_token

    results = run_together(refresh, count=4)
    assert results == ["at-1"] * 4, results
    assert calls == ["rt-old"]
    stored = CredentialStore(db_sessions).load(cred_id).secret
    assert (stored.access_token, stored.refresh_token) == ("at-1", "rt-1")


def test_a_rejected_token_is_refreshed_once_even_if_many_saw_the_401(db_sessions):
    clock = FakeClock()
    store = CredentialStore(db_sessions, clock=clock)
    cred_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, access_token="at-revoked",
                                         refresh_token="rt-old", expires_at=clock.now + 3000))
    calls: list[str] = []

    def refresher(current: OAuthCredential) -> OAuthCredential:
        calls.append(current.refresh_token)
        time.sleep(0.2)
        return replace(current, access_token="at-new", refresh_token="rt-new")

    results = run_together(lambda: CredentialStore(db_sessions, clock=clock).refresh_oauth(
        cred_id, refresher, rejected_access_token="at-revoked").access_token, count=3)
    assert results == ["at-new"] * 3 and calls == ["rt-old"]
