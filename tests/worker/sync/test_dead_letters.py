"""Failed deliveries: dead-lettered instead of looping, later events of the same issue held
behind them, and a person can replay or dismiss them."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from worker.db.models import Delivery, LedgerEntry
from worker.db.session import transaction
from worker.sync import deliveries, forward


def _statuses() -> dict[str, str]:
    with transaction() as session:
        return {d.id: d.status for d in session.scalars(select(Delivery))}


def _break(delivery_id: str) -> None:
    """Make a stored delivery fail for good, as a bug or bad data would."""
    with transaction() as session:
        d = session.get(Delivery, delivery_id)
        deliveries.fail(session, d, "RuntimeError: boom")


def test_delivery_that_never_finishes_is_dead_lettered_not_looped(harness):
    h = harness
    h.api("POST", "/issues", json={"title": "Poison"})
    assert h.state.wait_for_deliveries(10)
    [delivery_id] = _statuses()
    for _ in range(deliveries.MAX_RUNS):  # a worker that dies every time: starts, never finishes
        with transaction() as session:
            deliveries.start_run(session, delivery_id)
    assert _statuses()[delivery_id] == "received"
    with transaction() as session:
        deliveries.start_run(session, delivery_id)
    assert _statuses()[delivery_id] == "failed"
    with transaction() as session:
        entry = session.scalars(select(LedgerEntry).where(LedgerEntry.outcome == "failed")).one()
        assert "dead-lettered" in entry.detail


def test_a_batch_dead_letters_only_the_delivery_that_keeps_killing_its_worker(harness, monkeypatch):
    """A message of three: the first kills its worker every time. Each redelivery counts a run
    for all three (one statement for the message), so the two behind it reach the limit with
    it; only the first is dead-lettered, and the other two are then processed."""
    from worker.queue import tasks
    monkeypatch.setattr(tasks, "enqueue", lambda *job: True)
    h = harness
    for title in ("Poison", "Fine", "Also fine"):
        h.api("POST", "/issues", json={"title": title})
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        ids = list(session.scalars(select(Delivery.id).order_by(Delivery.received_at)))
    for _ in range(deliveries.MAX_RUNS):  # started, then the worker died in the first one
        with transaction() as session:
            deliveries.start_runs(session, ids)
    assert set(_statuses().values()) == {"received"}
    assert tasks.process_deliveries(ids) == {ids[0]: "skipped", ids[1]: "processed", ids[2]: "processed"}
    assert [_statuses()[i] for i in ids] == ["failed", "processed", "processed"]


def test_later_events_of_an_issue_wait_behind_a_failed_one_until_it_is_replayed(harness):
    h = harness
    issue = h.api("POST", "/issues", json={"title": "Ordered", "priority": "major"})
    h.process_webhooks()
    h.api("PUT", f"/issues/{issue['id']}", json={"priority": "critical"})
    assert h.state.wait_for_deliveries(10)
    first_update = [i for i, s in _statuses().items() if s == "received"][0]
    _break(first_update)
    h.api("PUT", f"/issues/{issue['id']}", json={"state": "resolved"})
    later = h.process_webhooks()
    assert [_statuses()[i] for i in later] == ["held"]
    ticket = h.web.get("/api/tickets", query_string={"connection": "acme"}).json["tickets"][0]
    assert (ticket["priority"], ticket["status"]) == ("normal", "new"), "nothing applied out of order"

    r = h.web.post(f"/api/deliveries/{first_update}/replay")
    assert r.status_code == 200 and r.json["queued"] == [first_update]
    with transaction() as session:
        outcome = forward.process_delivery(session, first_update)
    assert outcome.released == later
    for i in outcome.released:
        with transaction() as session:
            forward.process_delivery(session, i)
    ticket = h.web.get("/api/tickets", query_string={"connection": "acme"}).json["tickets"][0]
    assert (ticket["priority"], ticket["status"]) == ("high", "solved")


def test_dismissing_a_failed_delivery_releases_the_held_ones(harness):
    h = harness
    issue = h.api("POST", "/issues", json={"title": "Dismiss me"})
    h.process_webhooks()
    h.api("PUT", f"/issues/{issue['id']}", json={"kind": "task"})
    assert h.state.wait_for_deliveries(10)
    broken = [i for i, s in _statuses().items() if s == "received"][0]
    _break(broken)
    h.api("PUT", f"/issues/{issue['id']}", json={"state": "open"})
    [held] = h.process_webhooks()
    r = h.web.post(f"/api/deliveries/{broken}/dismiss", headers={"X-Actor": "ops@acme.example"})
    assert r.status_code == 200 and r.json["queued"] == [held]
    with transaction() as session:
        forward.process_delivery(session, held)
    assert _statuses()[held] == "processed" and _statuses()[broken] == "dismissed"
    ticket = h.web.get("/api/tickets", query_string={"connection": "acme"}).json["tickets"][0]
    assert (ticket["type"], ticket["status"]) == ("task", "open")


@pytest.mark.parametrize("action,status", [("replay", 409), ("dismiss", 409), ("explode", 404)])
def test_replay_and_dismiss_refuse_what_they_cannot_do(harness, action, status):
    h = harness
    h.api("POST", "/issues", json={"title": "Fine"})
    [done] = h.process_webhooks()
    assert h.web.post(f"/api/deliveries/{done}/{action}").status_code == status
    assert h.web.post(f"/api/deliveries/{'0' * 32}/replay").status_code == 404
    assert h.web.post("/api/deliveries/..%2Fetc/replay").status_code == 404
    assert _statuses()[done] == "processed"


def test_failed_event_payload_is_kept_for_the_replay(harness):
    h = harness
    h.api("POST", "/issues", json={"title": "Keep me"})
    assert h.state.wait_for_deliveries(10)
    [delivery_id] = _statuses()
    _break(delivery_id)
    with transaction() as session:
        body = json.loads(session.get(Delivery, delivery_id).body)
    assert body["issue"]["title"] == "Keep me"
