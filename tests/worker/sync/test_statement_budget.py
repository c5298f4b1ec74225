"""How many SQL statements one event costs the worker on PostgreSQL, counted, so that a change
that adds a query fails here: at most 8 for each kind (issue 14), the first event of a process
included (it reads the connection, which later events take from the process's cache)."""
from __future__ import annotations

import pytest
from sqlalchemy import event, select

from worker import connections
from worker.db.models import Delivery
from worker.db.session import get_engine, transaction
from worker.queue import tasks

#: Statements from "a worker takes the delivery" to "its effects and ledger rows are committed"
#: (the count of runs, the lock, the decision's reads, the writes), BEGIN and COMMIT aside.
BUDGET = {"issue:created": 8, "issue:updated": 8, "issue:comment_created": 8}


def _statements(delivery_id: str) -> list[str]:
    seen: list[str] = []

    def count(_conn, _cursor, statement, _params, _context, _many):
        seen.append(" ".join(statement.split()[:4]))
    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        assert tasks._run_delivery(delivery_id) == "processed"
    finally:
        event.remove(engine, "before_cursor_execute", count)
    return seen


def _next_delivery(h) -> str:
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        [delivery_id] = session.scalars(select(Delivery.id).where(Delivery.status == "received"))
    return delivery_id


@pytest.fixture
def worker(pg_harness, monkeypatch):
    queued = []
    monkeypatch.setattr(tasks, "enqueue", lambda *job: queued.append(job) or True)
    monkeypatch.setattr(tasks, "enqueue_delivery", lambda *job: queued.append(job) or True)
    connections._cache.clear()  # as in a worker that just started
    return pg_harness


def test_each_kind_of_event_stays_within_its_statement_budget(worker):
    h = worker
    issue = h.api("POST", "/issues", json={"title": "Checkout 500s", "priority": "critical"})
    counts = {"issue:created": _statements(_next_delivery(h))}
    h.api("PUT", f"/issues/{issue['id']}", json={"state": "resolved"})
    counts["issue:updated"] = _statements(_next_delivery(h))
    h.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "Fixed in 4.2"}})
    counts["issue:comment_created"] = _statements(_next_delivery(h))
    over = {kind: (len(statements), statements) for kind, statements in counts.items()
            if len(statements) > BUDGET[kind]}
    assert over == {}
