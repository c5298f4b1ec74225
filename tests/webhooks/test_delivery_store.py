"""The receiver's group commit (webhooks/delivery_store.py), on SQLite and on PostgreSQL:
requests that arrive during a commit share the next one, each still gets its own answer, and
one row the database refuses fails only its own request."""
from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from config.settings import get_settings
from webhooks import _receiver_engine
from webhooks.delivery_store import DeliveryWriter, insert_group
from worker import connections
from worker.db.models import utcnow
from worker.db.session import get_engine, transaction


@pytest.fixture(params=["sqlite", "postgresql"])
def writer(request) -> DeliveryWriter:
    """A DeliveryWriter on the engine the web app would give it, over a migrated database with
    one connection."""
    request.getfixturevalue("db" if request.param == "sqlite" else "postgres_db")
    with transaction() as session:
        connections.upsert(session, connections.ConnectionSpec(
            name="acme", repos=("acme/widgets",), webhook_secrets=("s3cret",)))
    writer = DeliveryWriter(_receiver_engine(get_settings().database_url))
    yield writer
    writer.engine.dispose()


def _connection_id() -> int:
    with transaction() as session:
        return session.execute(text("select id from connections where name = 'acme'")).scalar_one()


def _row(connection_id: int, request_uuid: str | None = None) -> dict:
    return dict(id=uuid.uuid4().hex, connection_id=connection_id,
                request_uuid=request_uuid or str(uuid.uuid4()), hook_uuid=None,
                event_key="issue:created", attempt=1, body='{"issue": {}}', status="received",
                error=None, received_at=utcnow(), issue_key="acme/widgets#1", runs=0)


def _stored() -> int:
    with get_engine().connect() as conn:
        return conn.execute(text("select count(*) from deliveries")).scalar_one()


def _write_concurrently(engine, rows: list[dict]) -> tuple[list, list[int], DeliveryWriter]:
    """Write rows[0] alone, and hold its commit until every other row has queued behind it.
    Returns what each write returned (or raised), in row order, the size of each group, and
    the writer."""
    groups: list[int] = []

    def insert_when_all_queued(engine, group_rows):
        groups.append(len(group_rows))
        if len(groups) == 1:
            deadline = time.monotonic() + 10
            while len(writer._queued) < len(rows) - 1:
                assert time.monotonic() < deadline, "the other writes never queued"
                time.sleep(0.005)
        return insert_group(engine, group_rows)

    writer = DeliveryWriter(engine, insert=insert_when_all_queued)
    results: list = [None] * len(rows)

    def write(i: int) -> None:
        try:
            results[i] = writer.write(rows[i])
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            results[i] = exc

    first = threading.Thread(target=write, args=(0,))
    first.start()
    while not groups:
        time.sleep(0.001)
    others = [threading.Thread(target=write, args=(i,)) for i in range(1, len(rows))]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(timeout=30)
    return results, groups, writer


def test_writes_that_arrive_during_a_commit_share_the_next_one(writer):
    cid = _connection_id()
    rows = [_row(cid) for _ in range(8)]
    results, groups, writer = _write_concurrently(writer.engine, rows)
    assert groups == [1, 7]
    assert results == [(row["id"], True) for row in rows]
    assert _stored() == 8


def test_a_lone_write_commits_at_once(writer):
    row = _row(_connection_id())
    assert writer.write(row) == (row["id"], True)
    assert _stored() == 1


def test_duplicates_in_one_group_and_across_groups_store_one_row(writer):
    cid = _connection_id()
    earlier = _row(cid, "dup-a")
    assert writer.write(earlier) == (earlier["id"], True)
    rows = [_row(cid), _row(cid, "dup-b"), _row(cid, "dup-b"), _row(cid, "dup-a")]
    results, groups, writer = _write_concurrently(writer.engine, rows)
    assert groups == [1, 3]
    assert results[0] == (rows[0]["id"], True)
    assert results[1] == (rows[1]["id"], True)
    assert results[2] == (rows[1]["id"], False)  # the same delivery, stored once
    assert results[3] == (earlier["id"], False)
    assert _stored() == 3


def test_a_row_the_database_refuses_fails_only_its_own_request(writer):
    cid = _connection_id()
    rows = [_row(cid), _row(cid), _row(cid + 999), _row(cid)]  # no such connection: FK violation
    results, groups, writer = _write_concurrently(writer.engine, rows)
    assert isinstance(results[2], IntegrityError)
    assert [results[i] for i in (0, 1, 3)] == [(rows[i]["id"], True) for i in (0, 1, 3)]
    assert groups == [1, 3, 1, 1, 1]  # the group failed, then its rows went one at a time
    assert _stored() == 3
    assert writer.write(_row(cid))[1] is True  # and the writer carries on


GEVENT_BURST = """
from gevent import monkey; monkey.patch_all()
import json, gevent
from webhooks.delivery_store import DeliveryWriter
groups = []
def insert(engine, rows):
    groups.append(len(rows))
    gevent.sleep(0.01)  # the round trip: psycopg yields to other greenlets here
    return [(row["id"], True) for row in rows]
writer = DeliveryWriter(None, insert=insert)
requests = [gevent.spawn(writer.write, {"id": f"d{i}"}) for i in range(8)]
gevent.joinall(requests, raise_error=True)
print(json.dumps({"groups": groups, "results": [r.value for r in requests]}))
"""


def test_under_gevent_requests_already_running_join_the_first_commit():
    # gunicorn's gevent workers: eight requests ready at once. The first to reach the writer
    # steps aside once before it commits, so the other seven queue and share its commit
    # instead of waiting for a second one ([1, 7] without that step).
    import json
    import subprocess
    import sys
    from pathlib import Path
    out = subprocess.run([sys.executable, "-c", GEVENT_BURST], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[2], check=True)
    seen = json.loads(out.stdout)
    assert seen["groups"] == [8]
    assert seen["results"] == [[f"d{i}", True] for i in range(8)]


def test_the_insert_is_prepared_at_its_first_run_unless_preparing_is_off(postgres_db):
    from sqlalchemy import create_engine
    with transaction() as session:
        connections.upsert(session, connections.ConnectionSpec(
            name="acme", repos=("acme/widgets",), webhook_secrets=("s3cret",)))
    cid = _connection_id()

    def writes_and_prepared(connect_args: dict, writes: int) -> int:
        """How many INSERTs the writer's one connection holds prepared after `writes` writes."""
        engine = create_engine(get_settings().database_url, isolation_level="AUTOCOMMIT",
                               pool_size=1, max_overflow=0, connect_args=connect_args)
        writer = DeliveryWriter(engine)
        try:
            for _ in range(writes):
                assert writer.write(_row(cid))[1] is True
            raw = engine.raw_connection()
            try:
                return raw.driver_connection.execute(
                    "select count(*) from pg_prepared_statements "
                    "where statement like 'INSERT INTO deliveries%'").fetchone()[0]
            finally:
                raw.close()
        finally:
            engine.dispose()

    assert writes_and_prepared({}, 1) == 1
    # Behind PgBouncer's transaction pooling a session's prepared statements may be gone by the
    # next transaction: there preparing is switched off, and the writer leaves it off, even
    # past psycopg's usual threshold of 5 runs.
    assert writes_and_prepared({"prepare_threshold": None}, 6) == 0


def test_on_threads_the_committer_does_not_step_aside(writer):
    # time.sleep(0) on a thread waits out the kernel's timer slack (tens of microseconds) and
    # gains nothing: requests queue while the committer waits on the database anyway.
    assert writer._step_aside is None
