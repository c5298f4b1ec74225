"""`process_deliveries`: the one message a web process sends for several stored deliveries.
Each delivery is processed as `process_delivery` would, isolated from the rest of its batch."""
from __future__ import annotations

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
