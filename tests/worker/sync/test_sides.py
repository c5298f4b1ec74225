"""Forward, reverse and conflicts through the Side interface, against the built-in helpdesk and
against a second side held in memory (tests/worker/sync/fake_side.py), with its failures."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.worker.sync.fake_side import FakeSide, FakeStore, RemoteFakeSide
from worker import targets
from worker.db.models import Conflict, Connection, Delivery, LedgerEntry, Link
from worker.db.session import transaction
from worker.queue import tasks
from worker.sync import conflicts, push, reverse, reverse_comments
from worker.targets import side_for
from worker.targets.side import Comment


class Helpdesk:
    """The agent's side of each target: the built-in one through its REST API, the fake one
    through its store and the two calls a helpdesk integration makes to queue its edits."""

    def __init__(self, h, kind: str, store: FakeStore):
        self.h, self.kind, self.store = h, kind, store

    def item(self, issue_id: int):
        if self.kind == "remote":  # its writes wait in the outbox until a push sends them
            _push_all(self.h)
        with transaction() as session:
            link = session.scalar(select(Link).where(Link.bitbucket_issue_id == issue_id))
            return side_for(session, self.kind).read(link.target_id), link.id

    def edit(self, item_id: str, **fields) -> None:
        if self.kind == "local":
            assert self.h.web.patch(f"/api/tickets/{item_id}", json=fields).status_code == 200
            return
        self.store.edit(item_id, **fields)
        with transaction() as session:
            reverse.record_ticket_edit(session, int(item_id), list(fields), "Ana")

    def reply(self, item_id: str, body: str, internal: bool = False) -> None:
        if self.kind == "local":
            r = self.h.web.post(f"/api/tickets/{item_id}/comments",
                                json={"body": body, "internal": internal, "author": "Ana"})
            assert r.status_code == 201
            return
        comment_id = str(next(self.store.ids))
        self.store.comments[comment_id] = Comment(comment_id, item_id, body, internal, "Ana")
        with transaction() as session:
            reverse_comments.record_ticket_comment(session, self.store.comments[comment_id])

    def notes(self, item_id: str) -> list[Comment]:
        with transaction() as session:
            return side_for(session, self.kind).list_comments(item_id)


def _desk(kind: str, harness, monkeypatch) -> Helpdesk:
    store = FakeStore()
    monkeypatch.setitem(targets.SIDES, "fake", lambda _session: FakeSide(store))
    monkeypatch.setitem(targets.SIDES, "remote", lambda _session: RemoteFakeSide(store))
    with transaction() as session:
        session.scalar(select(Connection)).target = kind
    return Helpdesk(harness, kind, store)


@pytest.fixture(params=["local", "fake", "remote"])
def desk(request, harness, monkeypatch) -> Helpdesk:
    return _desk(request.param, harness, monkeypatch)


@pytest.fixture
def fake_desk(harness, monkeypatch) -> Helpdesk:
    return _desk("fake", harness, monkeypatch)


def _push_all(h) -> None:
    with transaction() as session:
        links = list(session.scalars(select(Link.id)))
    for link_id in links:
        push.push_link(link_id, client_factory=h.client_factory)


def _outcomes(field: str | None = None) -> list[tuple[str, str]]:
    with transaction() as session:
        query = select(LedgerEntry).order_by(LedgerEntry.id)
        if field:
            query = query.where(LedgerEntry.field == field)
        return [(e.direction, e.outcome) for e in session.scalars(query)]


def test_an_issue_becomes_an_item_and_its_changes_and_comments_follow(desk):
    h = desk.h
    issue = h.api("POST", "/issues", json={"title": "Checkout 500s", "priority": "critical"})
    h.process_webhooks()
    item, _ = desk.item(issue["id"])
    assert (item.fields["title"], item.fields["priority"]) == ("Checkout 500s", "high")
    h.api("PUT", f"/issues/{issue['id']}", json={"state": "resolved"})
    h.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "Fixed in 4.2"}})
    h.process_webhooks()
    item, _ = desk.item(issue["id"])
    assert item.fields["status"] == "solved"
    assert [(n.body, n.internal) for n in desk.notes(item.id)] == [("Fixed in 4.2", True)]
    assert ("forward", "applied") in _outcomes("status") and ("forward", "applied") in _outcomes("comment")


def test_a_helpdesk_edit_and_reply_reach_bitbucket_once_and_come_back_as_echoes(desk):
    h = desk.h
    issue = h.api("POST", "/issues", json={"title": "Refund failed"})
    h.process_webhooks()
    item, _ = desk.item(issue["id"])
    desk.edit(item.id, priority="urgent")
    desk.reply(item.id, "We are on it.")
    desk.reply(item.id, "VIP customer", internal=True)
    _push_all(h)
    h.process_webhooks()
    remote = h.api("GET", f"/issues/{issue['id']}")
    assert remote["priority"] == "blocker"
    bodies = [c["content"]["raw"] for c in h.api("GET", f"/issues/{issue['id']}/comments")["values"]
              if c["content"]["raw"]]
    assert len(bodies) == 1 and bodies[0].startswith("We are on it.") and "VIP" not in bodies[0]
    assert _outcomes("priority")[-1] == ("forward", "echo")
    assert _outcomes("comment")[-1] == ("forward", "echo")
    assert desk.item(issue["id"])[0].fields["priority"] == "urgent"  # the echo changed nothing


def test_both_sides_change_a_field_under_manual_policy_and_a_person_decides(desk):
    h = desk.h
    issue = h.api("POST", "/issues", json={"title": "Slow search", "priority": "major"})
    h.process_webhooks()
    with transaction() as session:
        session.scalar(select(Connection)).policies = {"priority": "manual"}
    item, link_id = desk.item(issue["id"])
    desk.edit(item.id, priority="low")
    h.api("PUT", f"/issues/{issue['id']}", json={"priority": "critical"})
    h.process_webhooks()
    with transaction() as session:
        conflict = session.scalar(select(Conflict).where(Conflict.state == "open"))
        assert (conflict.field, conflict.bitbucket_value, conflict.target_value) == ("priority", "critical", "low")
    _push_all(h)  # parked: the field waits for the person
    assert h.api("GET", f"/issues/{issue['id']}")["priority"] == "critical"
    with transaction() as session:
        conflicts.resolve(session, conflict.id, "target", None, "lead")
    _push_all(h)
    h.process_webhooks()
    assert h.api("GET", f"/issues/{issue['id']}")["priority"] == "minor"
    assert desk.item(issue["id"])[0].fields["priority"] == "low"


# --- the fake side's failures ---------------------------------------------------------------

def _issue_then_update(desk) -> str:
    h = desk.h
    issue = h.api("POST", "/issues", json={"title": "Flaky"})
    h.process_webhooks()
    h.api("PUT", f"/issues/{issue['id']}", json={"state": "open"})
    assert h.state.wait_for_deliveries(10)
    with transaction() as session:
        return session.scalar(select(Delivery.id).where(Delivery.status == "received"))


@pytest.mark.parametrize("failure", ["timeout", "conflict"])
def test_a_side_that_times_out_or_meets_a_newer_version_is_retried_and_nothing_is_lost(
        fake_desk, failure, monkeypatch):
    desk = fake_desk
    delivery_id = _issue_then_update(desk)
    desk.store.failures.append(failure)
    retried = []
    monkeypatch.setattr(tasks.process_delivery, "apply_async",
                        lambda args, countdown: retried.append(args))
    assert tasks.process_deliveries([delivery_id]) == {delivery_id: "retrying"}
    assert retried == [[delivery_id]]
    with transaction() as session:
        assert session.get(Delivery, delivery_id).status == "received"  # nothing half-done
    assert tasks.process_deliveries([delivery_id]) == {delivery_id: "processed"}
    item, _ = desk.item(1)
    assert item.fields["status"] == "open"


def test_a_closed_item_fails_the_delivery_for_a_person_to_see(fake_desk):
    desk = fake_desk
    delivery_id = _issue_then_update(desk)
    item, _ = desk.item(1)
    desk.store.closed.add(item.id)
    assert tasks.process_deliveries([delivery_id]) == {delivery_id: "failed"}
    with transaction() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.status == "failed" and "ItemClosed" in delivery.error
