"""The worker reads a connection for every event from its process's cache, checked against the
connection's revision in the statement that starts the run: `bbsync connection add` changing
the repositories, the mapping or a policy is seen by the very next event."""
from __future__ import annotations

from sqlalchemy import select

from tests.worker.sync.conftest import REPO, TOKEN
from worker import connections
from worker.db.models import Delivery, Link
from worker.db.session import transaction
from worker.queue import tasks
from worker.db.helpdesk import Ticket


def _upsert(**changes) -> None:
    spec = dict(name="acme", repos=(REPO,), webhook_secrets=("s3cret",), api_token=TOKEN)
    spec.update(changes)
    with transaction() as session:
        connections.upsert(session, connections.ConnectionSpec(**spec))


def _run_next(h) -> tuple[str, str | None]:
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        [delivery_id] = session.scalars(select(Delivery.id).where(Delivery.status == "received"))
    tasks._run_delivery(delivery_id)
    with transaction() as session:
        d = session.get(Delivery, delivery_id)
        return d.status, d.error


def test_a_changed_connection_is_seen_by_the_next_event(harness, monkeypatch):
    h = harness
    monkeypatch.setattr(tasks, "enqueue", lambda *job: True)
    connections._cache.clear()
    h.api("POST", "/issues", json={"title": "One", "priority": "major"})
    assert _run_next(h) == ("processed", None)
    assert connections._cache  # the connection is now cached in this process

    _upsert(repos=("acme/other",))  # the repository leaves the connection
    h.api("POST", "/issues", json={"title": "Two"})
    status, error = _run_next(h)
    assert status == "ignored" and "not part of connection acme" in error

    _upsert(mapping_override={"priority": {"to_target": {"major": "urgent"}}})  # back, remapped
    h.api("POST", "/issues", json={"title": "Three", "priority": "major"})
    assert _run_next(h) == ("processed", None)
    with transaction() as session:
        link = session.scalar(select(Link).where(Link.bitbucket_issue_id == 3))
        assert session.get(Ticket, int(link.target_id)).priority == "urgent"


def test_the_cached_connection_is_read_only(harness, monkeypatch):
    monkeypatch.setattr(tasks, "enqueue", lambda *job: True)
    with transaction() as session:
        conn_id = connections.get(session, "acme").id
        revision = connections.get(session, "acme").updated_at
    with transaction() as session:
        cached = connections.cached(session, conn_id, revision)
        assert cached not in session and [r.full_name for r in cached.repos] == [REPO]
    with transaction() as session:  # same revision: no statement, the same object
        assert connections.cached(session, conn_id, revision) is cached
