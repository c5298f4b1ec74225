"""In a Celery worker a pooled PostgreSQL connection is pinged before use only if it sat idle
(issue 14): one the database dropped while it waited is replaced unseen; one used moments ago
costs no round trip, and if it was dropped in that moment its statement fails once, the pool
lets go of every connection, and the next transaction works (a worker's task retries
OperationalError). The web process pings every one, as pool_pre_ping does."""
from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests.webhooks.conftest import PG_URL, postgres_db  # noqa: F401  (a fixture)
from worker.db import session as db_session
from worker.db.session import get_engine, transaction


@pytest.fixture
def pings(postgres_db, monkeypatch):
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", db_session.WORKER_PING_AFTER_IDLE_S)
    engine = get_engine()
    count = [0]
    real = engine.dialect.do_ping

    def counted(dbapi_conn):
        count[0] += 1
        return real(dbapi_conn)
    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    yield count
    engine.dispose()


def _select_one() -> int:
    with transaction() as session:
        return session.execute(text("select 1")).scalar_one()


def _drop_connections(db_name: str) -> int:
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        return admin.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity "
                             "where datname = %s and pid <> pg_backend_pid()", (db_name,)).fetchone()[0]


def test_a_connection_in_steady_use_is_not_pinged(pings):
    for _ in range(20):
        assert _select_one() == 1
    assert pings[0] == 0


def test_an_idle_connection_the_database_dropped_is_replaced_before_use(pings, postgres_db, monkeypatch):
    assert _select_one() == 1
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)  # every pooled connection counts as idle
    assert _drop_connections(postgres_db) >= 1
    assert _select_one() == 1  # no error reaches the caller
    assert pings[0] == 1


def test_a_connection_dropped_while_in_use_fails_once_then_the_pool_starts_afresh(pings, postgres_db):
    assert _select_one() == 1
    assert _drop_connections(postgres_db) >= 1
    with pytest.raises(OperationalError) as caught:
        _select_one()
    assert caught.value.connection_invalidated
    assert _select_one() == 1
    assert pings[0] == 0


def test_the_web_process_pings_every_pooled_connection(pings, postgres_db, monkeypatch):
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)  # its setting: a request never fails
    assert _select_one() == 1
    assert _drop_connections(postgres_db) >= 1
    assert _select_one() == 1
    assert pings[0] == 2


def test_a_worker_process_pings_only_idle_connections(monkeypatch):
    from celery.signals import worker_init
    monkeypatch.setattr(db_session, "PING_AFTER_IDLE_S", 0.0)
    worker_init.send(sender=None)
    assert db_session.PING_AFTER_IDLE_S == db_session.WORKER_PING_AFTER_IDLE_S > 0
