"""`process_deliveries`: the one message a web process sends for several stored deliveries.
Each delivery is processed as `process_delivery` would, isolated from the rest of its batch."""
from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from worker.queue import tasks
from worker.db.models import Delivery, LedgerEntry, Link
from worker.db.session import transaction
from worker.sync import forward


def _received(h, titles: list[str]) -> list[str]:
    for title in titles:
        h.api("POST", "/issues", json={"title": title})
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        return list(session.scalars(select(Delivery.id).where(Delivery.status == "received")
                                    .order_by(Delivery.received_at)))


def _statuses(ids: list[str]) -> list[str]:
    with transaction() as session:
        return [session.get(Delivery, i).status for i in ids]


def test_a_batch_processes_each_delivery_in_order_and_a_redelivered_batch_changes_nothing(harness):
    ids = _received(harness, ["One", "Two", "Three"])
    assert tasks.process_deliveries(ids) == {i: "processed" for i in ids}
    with transaction() as session:
        links = list(session.scalars(select(Link).order_by(Link.target_id)))
        assert [link.bitbucket_issue_id for link in links] == [1, 2, 3]
        entries = session.scalar(select(LedgerEntry.id).order_by(LedgerEntry.id.desc()).limit(1))
    # Its worker died after the work: the broker hands the batch out again.
    assert tasks.process_deliveries(ids) == {i: "skipped" for i in ids}
    with transaction() as session:
        assert session.scalar(select(LedgerEntry.id).order_by(LedgerEntry.id.desc()).limit(1)) == entries


def test_one_delivery_that_fails_or_must_wait_does_not_hold_back_the_rest(harness, monkeypatch):
    ids = _received(harness, ["Fine", "Locked", "Broken", "Also fine"])
    fine, locked, broken, also_fine = ids
    real = forward.process_delivery

    def flaky(session, delivery):
        delivery_id = getattr(delivery, "id", delivery)  # the task hands in its taken run
        if delivery_id == locked:
            raise OperationalError("UPDATE links ...", {}, Exception("lock timeout"))
        if delivery_id == broken:
            raise RuntimeError("a bug")
        return real(session, delivery)

    retried = []
    monkeypatch.setattr(forward, "process_delivery", flaky)
    monkeypatch.setattr(tasks.process_delivery, "apply_async",
                        lambda args, countdown: retried.append((args, countdown)))
    outcomes = tasks.process_deliveries(ids)
    assert outcomes == {fine: "processed", locked: "retrying", broken: "failed", also_fine: "processed"}
    # The locked one goes on alone, retried with backoff like any process_delivery; the broken
    # one is recorded for a person, and neither stopped the fourth.
    assert [args for args, _ in retried] == [[locked]] and 0 <= retried[0][1] <= 1
    assert _statuses(ids) == ["processed", "received", "failed", "processed"]
    with transaction() as session:
        assert session.get(Delivery, broken).error == "RuntimeError: a bug"


def test_a_retry_that_cannot_be_queued_leaves_the_delivery_for_the_sweeper(harness, monkeypatch):
    [only, other] = _received(harness, ["Locked", "Other"])

    def locked(session, delivery_id):
        raise OperationalError("SELECT ...", {}, Exception("lock timeout"))

    def broker_down(*_args, **_kwargs):
        raise ConnectionError("the broker went away")

    monkeypatch.setattr(forward, "process_delivery", locked)
    monkeypatch.setattr(tasks.process_delivery, "apply_async", broker_down)
    assert tasks.process_deliveries([only, other]) == {only: "waiting", other: "waiting"}
    assert _statuses([only, other]) == ["received", "received"]  # the sweeper enqueues them


def test_a_batch_is_applied_in_one_transaction(harness, monkeypatch):
    """One commit for the message's deliveries, beside the one that counts their runs."""
    from sqlalchemy import event
    from worker.db.session import get_engine
    ids = _received(harness, ["One", "Two", "Three"])
    commits = []
    listener = lambda _conn: commits.append(1)  # noqa: E731
    event.listen(get_engine(), "commit", listener)
    try:
        assert tasks.process_deliveries(ids) == {i: "processed" for i in ids}
    finally:
        event.remove(get_engine(), "commit", listener)
    assert len(commits) == 2


def test_an_event_behind_one_that_failed_in_the_same_batch_waits_for_it(harness, monkeypatch):
    """The batch's transaction is rolled back, each goes alone, and the update of an issue
    whose creation just failed is held behind it, not applied out of order."""
    h = harness
    issue = h.api("POST", "/issues", json={"title": "Ordered", "priority": "major"})
    h.api("PUT", f"/issues/{issue['id']}", json={"priority": "critical"})
    other = h.api("POST", "/issues", json={"title": "Unrelated"})
    assert other["id"] != issue["id"]
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        ids = list(session.scalars(select(Delivery.id).order_by(Delivery.received_at)))
    created, updated, unrelated = ids
    real = forward.process_delivery

    def broken(session, delivery):
        if getattr(delivery, "id", delivery) == created:
            raise RuntimeError("a bug")
        return real(session, delivery)

    monkeypatch.setattr(forward, "process_delivery", broken)
    monkeypatch.setattr(tasks, "enqueue", lambda *job: True)
    assert tasks.process_deliveries(ids) == {created: "failed", updated: "held", unrelated: "processed"}
    assert _statuses(ids) == ["failed", "held", "processed"]


def _as_broker_hands_it_out(ids: list[str], redelivered: bool) -> dict[str, str]:
    """Run the task as a worker does for a message from the broker: with its delivery_info."""
    task = tasks.process_deliveries
    task.push_request(delivery_info={"exchange": "", "routing_key": "bbsync", "redelivered": redelivered})
    try:
        return task.run(ids)
    finally:
        task.pop_request()


def _runs(ids: list[str]) -> list[int]:
    with transaction() as session:
        return [session.get(Delivery, i).runs for i in ids]


def test_a_first_delivery_counts_its_runs_in_the_transaction_that_applies_them(harness, monkeypatch):
    from worker.sync import deliveries
    commits: list[str] = []
    real = deliveries.take_runs

    def counting(session, delivery_ids):
        commits.append("counted")
        return real(session, delivery_ids)
    monkeypatch.setattr(deliveries, "take_runs", counting)
    monkeypatch.setattr(deliveries, "start_runs", lambda *_: commits.append("counted apart"))
    ids = _received(harness, ["One", "Two"])
    assert _as_broker_hands_it_out(ids, redelivered=False) == {i: "processed" for i in ids}
    assert commits == ["counted"] and _runs(ids) == [1, 1]


def test_a_first_delivery_that_dies_in_its_work_loses_the_count_and_its_redelivery_counts_apart(harness, monkeypatch):
    ids = _received(harness, ["Poison"])
    real = forward.process_delivery

    def dies(session, taken):
        raise SystemExit("the worker was killed")   # not an Exception: nothing catches it
    monkeypatch.setattr(forward, "process_delivery", dies)
    with pytest.raises(SystemExit):
        _as_broker_hands_it_out(ids, redelivered=False)
    assert _runs(ids) == [0] and _statuses(ids) == ["received"]   # rolled back with the work
    with pytest.raises(SystemExit):
        _as_broker_hands_it_out(ids, redelivered=True)
    assert _runs(ids) == [1]                                         # counted apart, and kept
    monkeypatch.setattr(forward, "process_delivery", real)
    assert _as_broker_hands_it_out(ids, redelivered=True) == {ids[0]: "processed"}
    assert _runs(ids) == [2]


def test_a_first_delivery_whose_batch_fails_is_counted_once_and_taken_one_by_one(harness, monkeypatch):
    ids = _received(harness, ["Fine", "Broken"])
    real = forward.process_delivery

    def broken(session, taken):
        if taken.id == ids[1]:
            raise ValueError("bad data")
        return real(session, taken)
    monkeypatch.setattr(forward, "process_delivery", broken)
    assert _as_broker_hands_it_out(ids, redelivered=False) == {ids[0]: "processed", ids[1]: "failed"}
    assert _runs(ids) == [1, 1]
