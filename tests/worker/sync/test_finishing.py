"""Deliveries are marked done at their transaction's commit, all in one statement (on
PostgreSQL and SQLite alike): a message's deliveries cost one mark, a first run is counted by
it, a query of the transaction that reads the deliveries sees them marked, and a delivery
finished elsewhere, or twice, fails the commit rather than being marked again."""
from __future__ import annotations

import pytest
from sqlalchemy import event, select

from worker.db.models import Delivery
from worker.db.session import get_engine, transaction
from worker.queue import tasks
from worker.sync import deliveries


@pytest.fixture(params=["harness", "pg_harness"])
def h(request, monkeypatch):
    monkeypatch.setattr(tasks, "enqueue", lambda *job: True)
    return request.getfixturevalue(request.param)


def _received(h, n: int) -> list[str]:
    for i in range(n):
        h.api("POST", "/issues", json={"title": f"Issue {i}"})
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        return list(session.scalars(select(Delivery.id).where(Delivery.status == "received")
                                    .order_by(Delivery.received_at)))


def _rows(ids: list[str]) -> list[tuple[str, int]]:
    with transaction() as session:
        return [(d.status, d.runs) for d in (session.get(Delivery, i) for i in ids)]


def test_a_messages_deliveries_are_taken_and_marked_in_one_statement_each(h):
    ids = _received(h, 3)
    writes: list[str] = []

    def seen(_conn, _cursor, statement, _params, _context, _many):
        if statement.lstrip().upper().startswith("UPDATE DELIVERIES"):
            writes.append(statement)
    event.listen(get_engine(), "before_cursor_execute", seen)
    try:
        assert tasks._run_together(ids) == {i: "processed" for i in ids}
    finally:
        event.remove(get_engine(), "before_cursor_execute", seen)
    assert len(writes) == (1 if get_engine().dialect.name == "postgresql" else 3)  # SQLite: one per row
    assert _rows(ids) == [("processed", 1)] * 3  # each first run counted once, by the mark


def test_a_query_of_the_transaction_sees_its_deliveries_marked(h):
    [delivery_id] = _received(h, 1)
    with transaction() as session:
        deliveries.finish(session, delivery_id, "ignored", "not ours")
        assert session.scalar(select(Delivery.status).where(Delivery.id == delivery_id)) == "ignored"
    assert _rows([delivery_id]) == [("ignored", 0)]


def test_a_rollback_forgets_what_it_marked(h):
    [delivery_id] = _received(h, 1)
    with pytest.raises(RuntimeError):
        with transaction() as session:
            deliveries.finish(session, delivery_id, "processed", None)
            raise RuntimeError("the work failed")
    with transaction() as session:  # the same session class: nothing is left over for this one
        pass
    assert _rows([delivery_id]) == [("received", 0)]


def test_a_delivery_done_elsewhere_or_twice_fails_the_commit_and_nothing_is_marked(h):
    done, waiting = _received(h, 2)
    with transaction() as session:
        deliveries.finish(session, done, "processed", None)
    with pytest.raises(deliveries.AlreadyFinished):
        with transaction() as session:
            deliveries.finish(session, waiting, "processed", None)
            deliveries.finish(session, done, "ignored", None)
    assert _rows([done, waiting]) == [("processed", 0), ("received", 0)]
    with transaction() as session:
        deliveries.finish(session, waiting, "processed", None)
        with pytest.raises(deliveries.AlreadyFinished):
            deliveries.finish(session, waiting, "processed", None)
