"""Forward writes to a remote target side go through the outbox (plan -> send -> finish), with
the at-most-once claim and the echo bookkeeping of the writes to Bitbucket. The side is the
in-memory helpdesk of fake_side.py, declared remote (`writes_with_ledger = False`)."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.worker.sync.fake_side import FakeStore, RemoteFakeSide
from worker import targets
from worker.db.models import CommentLink, Connection, Delivery, LedgerEntry, Link, OutboxEntry
from worker.db.session import transaction
from worker.sync import push, push_target
from worker.targets.side import Unavailable


@pytest.fixture
def remote(harness, monkeypatch):
    store = FakeStore()
    monkeypatch.setitem(targets.SIDES, "remote", lambda _session: RemoteFakeSide(store))
    with transaction() as session:
        session.scalar(select(Connection)).target = "remote"
    return harness, store


def _link() -> Link:
    with transaction() as session:
        link = session.scalar(select(Link))
        session.expunge(link)
        return link


def _rows() -> list[tuple[str, str, str]]:
    with transaction() as session:
        return [(r.side, r.kind, r.state) for r in session.scalars(select(OutboxEntry).order_by(OutboxEntry.id))]


def _writes(store: FakeStore) -> list[str]:
    return [what for what, _item in store.calls]


def test_nothing_reaches_a_remote_side_inside_the_delivery_transaction_and_the_push_writes_it_once(remote):
    h, store = remote
    issue = h.api("POST", "/issues", json={"title": "Checkout 500s", "priority": "critical"})
    h.api("PUT", f"/issues/{issue['id']}", json={"state": "resolved"})
    h.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "Fixed in 4.2"}})
    h.process_webhooks()
    assert store.calls == [] and _link().target_id is None  # decided and planned, not sent
    assert _rows() == [("target", "create", "pending"), ("target", "fields", "pending"),
                       ("target", "comment", "pending")]
    assert h.web.get("/api/outbox?connection=acme").json == {
        "counts": {"pending": 3}, "sides": {"target": {"pending": 3}}}

    push.push_link(_link().id, client_factory=h.client_factory)
    assert _writes(store) == ["create", "apply", "add_comment"]
    item = store.items[_link().target_id]
    assert (item.fields["title"], item.fields["priority"], item.fields["status"]) == ("Checkout 500s", "high", "solved")
    [note] = store.comments.values()
    assert (note.body, note.internal) == ("Fixed in 4.2", True)
    assert {r[2] for r in _rows()} == {"sent"}
    with transaction() as session:
        assert session.scalar(select(CommentLink.target_comment_id)) == note.id
        sent = session.scalar(select(OutboxEntry).where(OutboxEntry.kind == "fields"))
        assert sent.unechoed == {"status": "solved"}  # what the side's own webhook will show back
        details = [e.detail for e in session.scalars(select(LedgerEntry).where(LedgerEntry.direction == "forward"))]
    assert any(d and d.startswith("queued the creation of a remote item") for d in details)
    assert any(d and d.startswith(f"created remote item {item.id}") for d in details)

    assert push.push_link(_link().id, client_factory=h.client_factory) == "nothing to push"
    assert len(store.calls) == 3


def test_field_changes_queued_for_an_item_go_out_as_one_write_with_the_latest_values(remote):
    h, store = remote
    issue = h.api("POST", "/issues", json={"title": "Slow search"})
    h.process_webhooks()
    push.push_link(_link().id, client_factory=h.client_factory)
    for state, priority in (("open", "major"), ("on hold", "blocker"), ("resolved", "blocker")):
        h.api("PUT", f"/issues/{issue['id']}", json={"state": state, "priority": priority})
    h.process_webhooks()
    store.calls.clear()
    push.push_link(_link().id, client_factory=h.client_factory)
    assert _writes(store) == ["apply"]
    assert {k: store.items[_link().target_id].fields[k] for k in ("status", "priority")} == {
        "status": "solved", "priority": "urgent"}


def test_a_comment_delivered_twice_while_its_note_waits_is_one_note(remote):
    h, store = remote
    issue = h.api("POST", "/issues", json={"title": "Refund failed"})
    h.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "Looking"}})
    h.process_webhooks()
    with transaction() as session:  # Bitbucket redelivers the comment's webhook
        session.query(Delivery).filter(Delivery.event_key == "issue:comment_created").update({"status": "received"})
    h.process_webhooks()
    push.push_link(_link().id, client_factory=h.client_factory)
    assert [c.body for c in store.comments.values()] == ["Looking"]


@pytest.mark.parametrize("kind, setup", [
    ("create", lambda h, issue: None),
    ("add_comment", lambda h, issue: h.api("POST", f"/issues/{issue['id']}/comments",
                                           json={"content": {"raw": "Seen on iOS too"}})),
])
def test_a_write_whose_answer_was_lost_is_found_on_the_retry_not_made_again(remote, kind, setup):
    h, store = remote
    issue = h.api("POST", "/issues", json={"title": "Crash on launch"})
    setup(h, issue)
    h.process_webhooks()
    if kind == "add_comment":
        store.failures[:] = []
        push_target.push(_link().id)  # the create goes through; the note waits
        with transaction() as session:
            session.query(OutboxEntry).filter(OutboxEntry.kind == "comment").update({"state": "pending"})
            session.query(CommentLink).delete()
        for note in list(store.comments):
            del store.comments[note]
    store.failures.append("lost")
    with pytest.raises(Unavailable):
        push.push_link(_link().id, client_factory=h.client_factory)
    with transaction() as session:  # the claim is given back; the row may have been written
        row = session.scalar(select(OutboxEntry).where(OutboxEntry.kind == kind.replace("add_", "")))
        assert (row.state, row.claimed_by) == ("sending", None) and "answer never arrived" in row.error
    push.push_link(_link().id, client_factory=h.client_factory)
    if kind == "create":
        assert len(store.items) == 1 and _link().target_id == next(iter(store.items))
    else:
        assert [c.body for c in store.comments.values()] == ["Seen on iOS too"]
        with transaction() as session:
            assert session.scalar(select(func.count()).select_from(CommentLink)) == 1
    assert {r[2] for r in _rows()} == {"sent"}


def test_rows_claimed_by_a_live_attempt_are_written_by_it_alone(remote):
    h, store = remote
    h.api("POST", "/issues", json={"title": "Two workers"})
    h.process_webhooks()
    with transaction() as session:
        held = push_target.plan(session, _link().id)  # another worker is sending these now
    assert held is not None
    assert push_target.push(_link().id) == [] and store.calls == []
    with transaction() as session:
        assert push_target.plan(session, _link().id) is None


def test_a_refused_write_is_recorded_failed_and_the_later_writes_go_on(remote):
    h, store = remote
    issue = h.api("POST", "/issues", json={"title": "Closed already"})
    h.process_webhooks()
    push.push_link(_link().id, client_factory=h.client_factory)
    store.closed.add(_link().target_id)
    h.api("PUT", f"/issues/{issue['id']}", json={"state": "resolved"})
    h.process_webhooks()
    push.push_link(_link().id, client_factory=h.client_factory)
    with transaction() as session:
        row = session.scalar(select(OutboxEntry).where(OutboxEntry.kind == "fields"))
        assert row.state == "failed" and "ItemClosed" in row.error
        failed = session.scalar(select(LedgerEntry).where(LedgerEntry.outcome == "failed"))
        assert failed.direction == "forward" and "closed" in failed.detail
        assert session.scalar(select(Delivery.status).order_by(Delivery.received_at.desc())) == "processed"
