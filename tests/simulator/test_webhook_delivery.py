"""Webhook delivery: which edits fire what, bodies, headers, signatures, retries, drops."""
from __future__ import annotations

import hashlib
import hmac
import json
import threading

import httpx2
import pytest

from simulator.app import create_app
from simulator.delivery import MAX_PAYLOAD_BYTES
from simulator.state import SimulatorState

from .helpers import API, AUTH, PUBLIC_URL, RECEIVER_URL, Api, basic, create_issue


def _bodies(receiver, key: str) -> list[dict]:
    return [json.loads(r.body) for r in receiver.events(key)]


def test_issue_created_is_delivered_with_bitbucket_headers(api, hook, state, receiver):
    issue = create_issue(api)
    assert state.wait_for_deliveries()
    [delivery] = receiver.received
    headers = delivery.headers
    assert headers["X-Event-Key"] == "issue:created"
    assert headers["X-Hook-Uuid"] == hook["uuid"].strip("{}")        # no braces in the header
    assert headers["X-Attempt-Number"] == "1"
    assert headers["User-Agent"] == "Bitbucket-Webhooks/2.0"
    assert headers["Content-Type"] == "application/json"
    assert len(headers["X-Request-Uuid"]) == 36
    body = json.loads(delivery.body)
    assert set(body) == {"actor", "issue", "repository"}
    assert body["issue"] == issue
    assert body["actor"]["uuid"] == api.get("/2.0/user").json["uuid"]


def test_signature_is_hmac_sha256_of_the_raw_body_with_the_secret(api, hook, state, receiver):
    create_issue(api)
    assert state.wait_for_deliveries()
    [delivery] = receiver.received
    expected = hmac.new(b"s3cret", delivery.body, hashlib.sha256).hexdigest()
    assert delivery.headers["X-Hub-Signature"] == f"sha256={expected}"


def test_no_signature_without_a_secret(api, state, receiver):
    api.post("hooks", json={"url": RECEIVER_URL, "events": ["issue:created"]})
    create_issue(api)
    assert state.wait_for_deliveries()
    assert "X-Hub-Signature" not in receiver.received[0].headers


def test_put_fires_issue_updated_with_status_change_and_null_comment(api, hook, state,
                                                                      receiver):
    create_issue(api, content={"raw": "old text"})
    ann = state.ensure_user("Ann", nickname="ann")
    api.put("issues/1", json={"state": "resolved", "content": {"raw": "new text"},
                              "assignee": {"uuid": ann["uuid"]}, "priority": "minor"})
    assert state.wait_for_deliveries()
    [body] = _bodies(receiver, "issue:updated")
    assert set(body) == {"actor", "issue", "repository", "changes", "comment"}
    changes = body["changes"]
    # Webhooks call the state `status` (the REST /changes API calls it `state`).
    assert changes["status"] == {"old": "new", "new": "resolved"}
    assert "state" not in changes
    assert changes["content"] == {"old": "old text", "new": "new text"}
    assert changes["priority"] == {"old": "major", "new": "minor"}
    assert changes["assignee"]["old"] is None
    assert changes["assignee"]["new"]["uuid"] == ann["uuid"]
    assert body["comment"]["content"]["raw"] is None
    assert body["comment"]["type"] == "issue_comment"
    assert body["issue"]["state"] == "resolved"


def test_unassigning_sends_the_old_user_and_null(api, hook, state, receiver):
    create_issue(api, assignee={"username": "ann"})
    api.put("issues/1", json={"assignee": None})
    assert state.wait_for_deliveries()
    [body] = _bodies(receiver, "issue:updated")
    assert body["changes"]["assignee"]["old"]["nickname"] == "ann"
    assert body["changes"]["assignee"]["new"] is None


def test_post_changes_fires_issue_updated_with_the_message_as_comment(api, hook, state,
                                                                       receiver):
    create_issue(api)
    api.post("issues/1/changes", json={"changes": {"state": {"new": "closed"},
                                                   "kind": {"new": "task"},
                                                   "title": {"new": "Renamed"}},
                                       "message": {"raw": "Closing, see #2"}})
    assert state.wait_for_deliveries()
    [body] = _bodies(receiver, "issue:updated")
    assert body["comment"]["content"]["raw"] == "Closing, see #2"
    assert body["changes"]["status"] == {"old": "new", "new": "closed"}
    assert body["changes"]["kind"] == {"old": "bug", "new": "task"}
    assert body["changes"]["title"] == {"old": "Printer on fire", "new": "Renamed"}
    comment_ids = [c["id"] for c in api.get("issues/1/comments").json["values"]]
    assert body["comment"]["id"] in comment_ids


def test_comment_create_fires_comment_created(api, hook, state, receiver):
    create_issue(api)
    comment = api.post("issues/1/comments", json={"content": {"raw": "Hello"}}).json
    assert state.wait_for_deliveries()
    [body] = _bodies(receiver, "issue:comment_created")
    assert set(body) == {"actor", "issue", "repository", "comment"}
    assert body["comment"]["id"] == comment["id"]
    assert body["comment"]["content"]["raw"] == "Hello"
    assert body["issue"]["updated_on"] == api.get("issues/1").json["updated_on"]


def test_comment_edit_and_delete_and_issue_delete_fire_nothing(api, hook, state, receiver):
    create_issue(api)
    cid = api.post("issues/1/comments", json={"content": {"raw": "Hello"}}).json["id"]
    assert state.wait_for_deliveries()
    before = len(receiver.received)
    api.put(f"issues/1/comments/{cid}", json={"content": {"raw": "Edited"}})
    api.delete(f"issues/1/comments/{cid}")
    api.delete("issues/1")
    assert state.wait_for_deliveries()
    assert len(receiver.received) == before == 2


def test_our_own_writes_come_back_as_webhooks_with_us_as_actor(api, hook, state, receiver):
    create_issue(api)
    other = Api(api.client.application, basic("human@example.com", "pw"))
    other.put(f"{API}/issues/1", json={"state": "open"})
    assert state.wait_for_deliveries()
    created, updated = [json.loads(r.body) for r in receiver.received]
    assert created["actor"]["display_name"] == "dev@example.com"
    assert updated["actor"]["display_name"] == "human@example.com"


def test_only_active_hooks_subscribed_to_the_event_get_it(api, state, receiver):
    api.post("hooks", json={"url": RECEIVER_URL, "events": ["issue:comment_created"]})
    api.post("hooks", json={"url": RECEIVER_URL, "events": ["issue:created"],
                            "active": False})
    both = [api.post("hooks", json={"url": RECEIVER_URL, "events": ["issue:created"]}).json,
            api.post("hooks", json={"url": RECEIVER_URL, "events": ["issue:created"]}).json]
    create_issue(api)
    assert state.wait_for_deliveries()
    assert {r.headers["X-Hook-Uuid"] for r in receiver.received} == {
        h["uuid"].strip("{}") for h in both}
    assert len({r.headers["X-Request-Uuid"] for r in receiver.received}) == 2


def test_deliveries_are_asynchronous_and_in_order(api, hook, state, receiver):
    receiver.gate = threading.Event()
    create_issue(api)                      # returns while the receiver is still blocked
    api.put("issues/1", json={"state": "open"})
    api.post("issues/1/comments", json={"content": {"raw": "x"}})
    assert receiver.received == []
    receiver.gate.set()
    assert state.wait_for_deliveries()
    assert [r.headers["X-Event-Key"] for r in receiver.received] == [
        "issue:created", "issue:updated", "issue:comment_created"]


def test_5xx_is_retried_exactly_twice_more_with_the_same_request_uuid(api, hook, state,
                                                                      receiver):
    receiver.statuses = [500, 503, 502, 500]
    create_issue(api)
    assert state.wait_for_deliveries()
    assert [r.headers["X-Attempt-Number"] for r in receiver.received] == ["1", "2", "3"]
    assert len({r.headers["X-Request-Uuid"] for r in receiver.received}) == 1
    assert len({r.body for r in receiver.received}) == 1
    assert [(d.attempt, d.status) for d in state.deliveries] == [(1, 500), (2, 503), (3, 502)]
    assert receiver.statuses == [500]                 # given up after the third attempt


def test_retry_stops_at_the_first_success(api, hook, state, receiver):
    receiver.statuses = [500]
    create_issue(api)
    assert state.wait_for_deliveries()
    assert [(d.attempt, d.status) for d in state.deliveries] == [(1, 500), (2, 200)]


@pytest.mark.parametrize("status", [400, 401, 404, 410])
def test_4xx_is_not_retried(api, hook, state, receiver, status):
    receiver.statuses = [status]
    create_issue(api)
    assert state.wait_for_deliveries()
    assert [(d.attempt, d.status) for d in state.deliveries] == [(1, status)]


class _Unreachable(httpx2.BaseTransport):
    def __init__(self) -> None:
        self.calls = 0

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        self.calls += 1
        raise httpx2.ConnectError("connection refused", request=request)


def test_connection_errors_are_retried_then_given_up():
    transport = _Unreachable()
    with SimulatorState(public_url=PUBLIC_URL, transport=transport) as state:
        api = Api(create_app(state), AUTH)
        api.post(API, json={"scm": "git", "has_issues": True})
        api.post("hooks", json={"url": RECEIVER_URL, "events": ["issue:created"]})
        create_issue(api)
        assert state.wait_for_deliveries()
    assert transport.calls == 3
    assert [d.attempt for d in state.deliveries] == [1, 2, 3]
    assert all(d.status is None and "ConnectError" in d.error for d in state.deliveries)


def test_payloads_over_256_kb_are_silently_dropped(api, hook, state, receiver):
    create_issue(api, content={"raw": "x" * MAX_PAYLOAD_BYTES})
    create_issue(api)
    assert state.wait_for_deliveries()
    assert len(receiver.received) == 1
    dropped = [d for d in state.deliveries if d.dropped]
    assert len(dropped) == 1 and "256 KB" in dropped[0].error


def test_drop_webhooks_fault_loses_the_next_delivery(api, hook, state, receiver):
    state.faults.drop_webhooks(times=1)
    create_issue(api)
    create_issue(api)
    assert state.wait_for_deliveries()
    assert [json.loads(r.body)["issue"]["id"] for r in receiver.received] == [2]
    assert state.deliveries[0].dropped


def test_without_delivery_events_are_still_recorded():
    with SimulatorState(deliver_webhooks=False) as state:
        api = Api(create_app(state), AUTH)
        api.post(API, json={"scm": "git", "has_issues": True})
        api.post("hooks", json={"url": RECEIVER_URL, "events": ["issue:created"]})
        create_issue(api)
        assert state.wait_for_deliveries()
        assert state.deliveries == []
        assert [(e.event_key, e.repository) for e in state.events] == [
            ("issue:created", "acme/widgets")]
