"""Two runs of one delivery at once (a redelivered message, a sweeper's second enqueue), on
PostgreSQL with real row locks: the second does its work while the first holds it, then finds
the delivery finished and rolls back. Exactly one effect, one set of ledger rows."""
from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select

from tests.worker.sync.conftest import in_thread
from worker.db.helpdesk import Ticket, TicketComment
from worker.db.models import Delivery, LedgerEntry
from worker.db.session import transaction
from worker.queue import tasks
from worker.sync import deliveries


def _received(h) -> str:
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        [delivery_id] = session.scalars(select(Delivery.id).where(Delivery.status == "received"))
    return delivery_id


def _counts() -> tuple[int, int, int]:
    with transaction() as session:
        return (session.scalar(select(func.count()).select_from(Ticket)),
                session.scalar(select(func.count()).select_from(TicketComment)),
                session.scalar(select(func.count()).select_from(LedgerEntry)))


@pytest.mark.parametrize("kind", ["issue:created", "issue:updated", "issue:comment_created"])
def test_two_overlapping_runs_of_one_delivery_have_one_effect(pg_harness, monkeypatch, kind):
    h = pg_harness
    monkeypatch.setattr(tasks, "enqueue", lambda *job: True)
    issue = h.api("POST", "/issues", json={"title": "Checkout 500s", "priority": "critical"})
    if kind != "issue:created":
        tasks._run_delivery(_received(h))
    if kind == "issue:updated":
        h.api("PUT", f"/issues/{issue['id']}", json={"state": "resolved"})
    if kind == "issue:comment_created":
        h.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "Seen it"}})
    delivery_id = _received(h)
    before = _counts()

    real_finish = deliveries.finish
    first_inside, let_first_finish = threading.Event(), threading.Event()

    def finish(session, *args):
        if threading.current_thread().name == "first":
            first_inside.set()  # its effects are made, uncommitted, its locks held
            assert let_first_finish.wait(30)
        return real_finish(session, *args)
    monkeypatch.setattr(deliveries, "finish", finish)

    first = threading.Thread(target=lambda: results.append(("first", tasks._run_delivery(delivery_id))),
                             name="first", daemon=True)
    results: list = []
    first.start()
    assert first_inside.wait(30)
    second, second_result = in_thread(lambda: _second_run(delivery_id))
    second.join(1.0)  # it waits on the first's locks (link row or unique key)
    let_first_finish.set()
    first.join(30)
    second.join(30)
    assert results == [("first", "processed")]
    assert second_result == ["skipped"]
    after = _counts()
    tickets, comments, ledger_rows = (a - b for a, b in zip(after, before))
    assert (tickets, comments) == {"issue:created": (1, 0), "issue:updated": (0, 0),
                                   "issue:comment_created": (0, 1)}[kind]
    assert ledger_rows > 0
    with transaction() as session:
        assert session.get(Delivery, delivery_id).status == "processed"
        assert session.scalar(select(func.count()).select_from(LedgerEntry)
                              .where(LedgerEntry.delivery_id == delivery_id)) == ledger_rows


def _second_run(delivery_id: str) -> str:
    """A second worker's run, retried as the task retries a lost race (the unique key)."""
    for _ in range(3):
        try:
            return tasks._run_delivery(delivery_id)
        except tasks.RETRYABLE:
            continue
    raise AssertionError("the second run kept failing")
