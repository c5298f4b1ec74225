"""A new issue's link and shadows go in by prebuilt statements, not an ORM flush (issue 14):
the link is attached as if loaded (reading it costs no query), its shadows are one insert, and
a second creator of the same link still fails on the unique key, for its task to retry."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import IntegrityError

from worker.db.models import Connection, Delivery, Link, Shadow
from worker.db.session import get_engine, transaction
from worker.queue import tasks
from worker.sync import links


@pytest.fixture(params=["harness", "pg_harness"])
def h(request, monkeypatch):
    monkeypatch.setattr(tasks, "enqueue", lambda *job: True)
    return request.getfixturevalue(request.param)


def _statements(into: list[str]):
    def seen(_conn, _cursor, statement, _params, _context, _many):
        into.append(" ".join(statement.split()[:3]).upper())
    return seen


def test_a_new_issue_inserts_its_link_and_shadows_once_each_and_reads_nothing_back(h):
    h.api("POST", "/issues", json={"title": "Crash on save", "priority": "major"})
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        [delivery_id] = session.scalars(select(Delivery.id))
    seen: list[str] = []
    listener = _statements(seen)
    event.listen(get_engine(), "before_cursor_execute", listener)
    try:
        assert tasks._run_together([delivery_id]) == {delivery_id: "processed"}
    finally:
        event.remove(get_engine(), "before_cursor_execute", listener)
    assert seen.count("INSERT INTO LINKS") == 1
    assert seen.count("INSERT INTO SHADOWS") == 1
    # The lock that found no link is the only read of the links table: nothing is read back.
    assert len([s for s in seen if s.startswith("SELECT") and "LINKS" in s]) == 1
    with transaction() as session:
        link = session.scalars(select(Link)).one()
        shadows = {s.field: (s.bitbucket_value, s.target_value) for s in session.scalars(select(Shadow))}
        assert link.target_id and link.created_at is not None
    assert shadows["title"] == ("Crash on save", "Crash on save")
    assert shadows["priority"] == ("major", "normal")


def test_the_inserted_link_is_attached_as_loaded_and_a_second_creator_fails(h):
    seen: list[str] = []
    with transaction() as session:
        conn_id = session.scalar(select(Connection.id))
        link = links.insert(session, Link(connection_id=conn_id, bitbucket_repo="acme/widgets",
                                          bitbucket_issue_id=7, bitbucket_url=None, target_id="70",
                                          bitbucket_updated_at=None))
        listener = _statements(seen)
        event.listen(get_engine(), "before_cursor_execute", listener)
        try:
            assert (link.id, link.target_id, link.bitbucket_issue_id) == (link.id, "70", 7)
            assert link.created_at is not None and session.get(Link, link.id) is link
        finally:
            event.remove(get_engine(), "before_cursor_execute", listener)
    assert seen == []  # nothing loaded back
    with pytest.raises(IntegrityError):
        with transaction() as session:
            links.insert(session, Link(connection_id=conn_id, bitbucket_repo="acme/widgets",
                                       bitbucket_issue_id=7, bitbucket_url=None, target_id="71",
                                       bitbucket_updated_at=None))


def test_shadows_go_in_by_one_statement_as_given(h):
    """Absent columns NULL, times back as the same aware instants, one execution; on
    PostgreSQL not an executemany (psycopg runs one in pipeline mode) and the same statement
    for any count."""
    at = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))
    executions: list[tuple[str, bool]] = []

    def seen(_conn, _cursor, statement, _params, _context, many):
        executions.append((statement, many))
    with transaction() as session:
        conn_id = session.scalar(select(Connection.id))
        made = [links.insert(session, Link(connection_id=conn_id, bitbucket_repo="acme/widgets",
                                           bitbucket_issue_id=n, bitbucket_url=None, target_id=str(n),
                                           bitbucket_updated_at=None)) for n in (8, 9)]
        event.listen(get_engine(), "before_cursor_execute", seen)
        try:
            links.insert_shadows(session, [
                {"link_id": made[0].id, "field": "status", "bitbucket_value": "new", "target_value": "open",
                 "bitbucket_at": at},
                {"link_id": made[0].id, "field": "title", "bitbucket_value": "it's \"quoted\" \u00e9",
                 "target_value": None, "target_at": at}])
            links.insert_shadows(session, [{"link_id": made[1].id, "field": "status"}])
            links.insert_shadows(session, [])
        finally:
            event.remove(get_engine(), "before_cursor_execute", seen)
    assert len(executions) == 2  # one execution per call, none for no rows
    if get_engine().dialect.name == "postgresql":
        assert [many for _s, many in executions] == [False, False]
        assert executions[0][0] == executions[1][0]  # prepared once per connection
    with transaction() as session:
        rows = {(s.link_id, s.field): s for s in session.scalars(select(Shadow))}
    status, title, bare = rows[(made[0].id, "status")], rows[(made[0].id, "title")], rows[(made[1].id, "status")]
    assert (status.bitbucket_value, status.target_value, status.bitbucket_at, status.target_at) == \
        ("new", "open", at, None)
    assert status.bitbucket_at.tzinfo is not None
    assert (title.bitbucket_value, title.target_value, title.target_at) == ("it's \"quoted\" \u00e9", None, at)
    assert (bare.bitbucket_value, bare.target_value, bare.bitbucket_at, bare.target_at) == (None, None, None, None)
