"""The receiver's INSERT when the database connection drops: one retry on a new connection, and
no delivery left unqueued when the first try's commit landed but its answer was lost."""
from __future__ import annotations

import logging
import uuid

from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from tests.conftest import load_fixture
from tests.webhooks.conftest import PG_URL
from webhooks import create_app
from webhooks.delivery_store import DeliveryWriter, insert_group
from webhooks.signatures import sign
from worker import connections
from worker.db.session import transaction

SECRET = "s3cret"
BODY = load_fixture("kanboard__bitbucket_issue_opened")


def _add_connection() -> None:
    with transaction() as session:
        connections.upsert(session, connections.ConnectionSpec(
            name="acme", repos=("minicoders/test-webhook",), webhook_secrets=(SECRET,)))


def _app():
    queued: list = []
    app = create_app(enqueue=lambda task, arg: queued.append((task, arg)) or True)
    return app, queued


def _insert_with(app, insert) -> None:
    """The app's delivery writer, with `insert` (which wraps or replaces insert_group) for its
    commits: how these tests make a commit's answer get lost, or fail."""
    state = app.extensions["bbsync"]
    state.deliveries = DeliveryWriter(state.deliveries.engine, insert=insert)


def _deliver(client):
    return client.post("/webhooks/bitbucket/acme", data=BODY, headers={
        "X-Event-Key": "issue:created", "X-Request-UUID": str(uuid.uuid4()),
        "X-Hub-Signature": sign(SECRET, BODY), "Content-Type": "application/json"})


def _wait_queued(queued: list, n: int) -> None:
    import time
    deadline = time.monotonic() + 5
    while len(queued) < n:
        assert time.monotonic() < deadline, queued
        time.sleep(0.01)


def _dropped(statement: str) -> OperationalError:
    return OperationalError(statement, {}, Exception("server closed the connection unexpectedly"),
                            connection_invalidated=True)


def test_a_commit_that_landed_before_the_connection_died_is_still_queued_once(db, caplog):
    _add_connection()
    app, queued = _app()
    tries = []

    def insert_then_lose_the_answer(engine, rows):
        tries.extend(row["id"] for row in rows)
        result = insert_group(engine, rows)
        if len(tries) == 1:
            raise _dropped("COMMIT")
        return result

    _insert_with(app, insert_then_lose_the_answer)
    with caplog.at_level(logging.WARNING, "bbsync.webhooks"):
        r = _deliver(app.test_client())
    assert r.status_code == 202, r.json
    delivery = r.json["delivery"]
    assert tries == [delivery, delivery]  # retried with the same row
    _wait_queued(queued, 1)
    assert queued == [("process_delivery", delivery)]
    assert "webhook.db_reconnect" in caplog.text
    with transaction() as session:
        assert session.execute(text("select count(*) from deliveries")).scalar() == 1


def test_an_error_that_is_not_a_dropped_connection_is_not_retried(db):
    _add_connection()
    app, _queued = _app()
    tries = []

    def failing_insert(engine, rows):
        tries.extend(row["id"] for row in rows)
        raise OperationalError("INSERT", {}, Exception("disk full"))

    _insert_with(app, failing_insert)
    r = _deliver(app.test_client())
    assert r.status_code == 500
    assert len(tries) == 1


def test_receiver_survives_postgresql_dropping_its_connections(postgres_db, caplog):
    """What a PostgreSQL restart or failover does to the web process's idle pooled connections.
    The receiver's engine does not ping before each use, so it must reconnect by itself."""
    import psycopg
    _add_connection()
    app, queued = _app()
    client = app.test_client()
    first = _deliver(client)
    assert first.status_code == 202, first.json

    with psycopg.connect(PG_URL, autocommit=True) as admin:
        killed = admin.execute("select count(pg_terminate_backend(pid)) from pg_stat_activity "
                               "where datname = %s and pid <> pg_backend_pid()", (postgres_db,)).fetchone()[0]
    assert killed >= 1

    with caplog.at_level(logging.WARNING, "bbsync.webhooks"):
        second = _deliver(client)
    assert second.status_code == 202, second.json
    assert "webhook.db_reconnect" in caplog.text
    _wait_queued(queued, 2)
    assert queued == [("process_delivery", first.json["delivery"]), ("process_delivery", second.json["delivery"])]
    with transaction() as session:
        assert session.execute(text("select count(*) from deliveries")).scalar() == 2
    app.extensions["bbsync"].deliveries.engine.dispose()
