"""Bitbucket -> helpdesk, end to end: signed webhooks over HTTP into gunicorn, a real Celery
worker, and the resulting tickets and ledger read back through the public API."""
from __future__ import annotations

import json
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.conftest import fixture_json, load_fixture

pytestmark = pytest.mark.integration

EVENT_KEYS = {
    "kanboard__bitbucket_issue_opened": "issue:created",
    "kanboard__bitbucket_issue_closed": "issue:updated",
    "kanboard__bitbucket_comment_created": "issue:comment_created",
    "zulip__issue_updated": "issue:updated",
    "zulip__issue_commented": "issue:comment_created",
    "go-playground__issue-created": "issue:created",
    "go-playground__issue-updated": "issue:updated",
    "go-playground__issue-comment-created": "issue:comment_created",
}

# What the default mapping tables predict for each captured payload, delivered on its own (so
# the ticket is created from the payload). Synthetic payloads carry placeholder enums: those
# fields are recorded as unmapped and the ticket keeps the helpdesk's defaults.
EXPECTED = {
    "kanboard__bitbucket_issue_opened": dict(
        title="My new issue", description="**test**", status="new", priority="normal",
        type="problem", assignee=None, reporter="Frederic Guillot", notes=[]),
    "kanboard__bitbucket_issue_closed": dict(
        title="My new issue", description="**test**", status="closed", priority="normal",
        type="problem", assignee="Frederic Guillot", reporter="Frederic Guillot", notes=[]),
    "kanboard__bitbucket_comment_created": dict(
        title="My new issue", description="**test**", status="new", priority="normal",
        type="problem", assignee=None, reporter="Frederic Guillot",
        notes=[("1. step1\n2. step2", "Frederic Guillot")]),
    "zulip__issue_updated": dict(
        title="Bug", description="Such a bug more description", status="new", priority="normal",
        type="problem", assignee="Tomasz", reporter="Tomasz", notes=[]),
    "zulip__issue_commented": dict(
        title="Bug", description="Such a bug more description", status="new", priority="normal",
        type="problem", assignee="Tomasz", reporter="Tomasz", notes=[("Add comment", "Tomasz")]),
    "go-playground__issue-created": dict(
        title="Issue title", description="Issue description", status="new", priority="normal",
        type="problem", assignee=None, reporter=None, notes=[], unmapped={"status", "priority", "type"}),
    "go-playground__issue-updated": dict(
        title="Issue title", description="Issue description", status="new", priority="normal",
        type="problem", assignee=None, reporter=None, notes=[("Comment text", None)],
        unmapped={"status", "priority", "type"}),
    "go-playground__issue-comment-created": dict(
        title="Issue title", description="Issue description", status="new", priority="normal",
        type="problem", assignee=None, reporter=None, notes=[("Comment text", None)],
        unmapped={"status", "priority", "type"}),
}


def _ticket(running, conn: str, repo: str, issue_id: int) -> dict:
    tickets = running.get("/api/tickets", bitbucket_repo=repo, bitbucket_issue=issue_id,
                          connection=conn).json()["tickets"]
    assert len(tickets) == 1, tickets
    return tickets[0]


def _ledger(running, connection: str) -> list[dict]:
    return running.get("/api/ledger", connection=connection).json()["entries"]


@pytest.mark.parametrize("name", sorted(EVENT_KEYS))
def test_every_captured_payload_yields_the_predicted_ticket(running, name):
    payload = fixture_json(name)
    repo = payload["repository"]["full_name"]
    conn, secret = running.add_connection([repo])

    response = running.deliver(conn, EVENT_KEYS[name], load_fixture(name), secret)
    assert response.status_code == 202, response.text
    assert running.wait_processed(response.json()["delivery"]) == "processed"

    ticket = _ticket(running, conn, repo, payload["issue"]["id"])
    expected = dict(EXPECTED[name])
    notes = expected.pop("notes")
    unmapped = expected.pop("unmapped", set())
    assert {k: ticket[k] for k in expected} == expected
    assert [(c["body"], c["author"]) for c in ticket["comments"]] == notes
    assert all(c["internal"] for c in ticket["comments"])
    assert ticket["bitbucket"]["repo"] == repo

    entries = _ledger(running, conn)
    assert {e["field"] for e in entries if e["outcome"] == "unmapped"} >= unmapped
    assert all(e["delivery"] == response.json()["delivery"] for e in entries)
    assert {e["direction"] for e in entries} == {"forward"}


def test_issue_lifecycle_applies_only_what_changed(running):
    repo = "minicoders/test-webhook"
    conn, secret = running.add_connection([repo])
    deliveries = {}
    for name in ("kanboard__bitbucket_issue_opened", "kanboard__bitbucket_issue_closed",
                 "kanboard__bitbucket_comment_created"):
        r = running.deliver(conn, EVENT_KEYS[name], load_fixture(name), secret)
        deliveries[name] = r.json()["delivery"]
        assert running.wait_processed(deliveries[name]) == "processed"

    ticket = _ticket(running, conn, repo, 1)
    assert ticket["status"] == "closed" and ticket["assignee"] == "Frederic Guillot"
    # The change record attached to the close (content.raw null) is not a comment; the real one is.
    assert [c["body"] for c in ticket["comments"]] == ["1. step1\n2. step2"]

    entries = _ledger(running, conn)
    close = deliveries["kanboard__bitbucket_issue_closed"]
    assert {(e["outcome"], e["field"], e["old"], e["new"]) for e in entries if e["delivery"] == close} == {
        ("applied", "status", "new", "closed"), ("applied", "assignee", None, "Frederic Guillot")}
    # The comment event carries an issue snapshot older than the close: recorded as stale, it
    # does not reopen the ticket, and its comment is still noted.
    comment = deliveries["kanboard__bitbucket_comment_created"]
    assert {e["outcome"] for e in entries if e["delivery"] == comment} == {"stale", "applied"}


def test_duplicate_delivery_has_no_second_effect(running):
    name = "zulip__issue_commented"
    conn, secret = running.add_connection([fixture_json(name)["repository"]["full_name"]])
    request_uuid = str(uuid.uuid4())
    first = running.deliver(conn, "issue:comment_created", load_fixture(name), secret, request_uuid)
    second = running.deliver(conn, "issue:comment_created", load_fixture(name), secret, request_uuid,
                             X_Attempt_Number="2")
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json()
    running.wait_processed(first.json()["delivery"])

    assert running.scalar("select count(*) from deliveries d join connections c on c.id = d.connection_id "
                          "where c.name = :n", n=conn) == 1
    ticket = _ticket(running, conn, "kolaszek/repository-name", 1)
    assert len(ticket["comments"]) == 1


def test_concurrent_duplicates_store_one_delivery(running):
    name = "kanboard__bitbucket_issue_opened"
    conn, secret = running.add_connection(["minicoders/test-webhook"])
    request_uuid = str(uuid.uuid4())
    with ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(lambda _: running.deliver(
            conn, "issue:created", load_fixture(name), secret, request_uuid), range(16)))
    assert {r.status_code for r in responses} == {202}
    assert len({r.json()["delivery"] for r in responses}) == 1
    running.wait_processed(responses[0].json()["delivery"])
    assert running.scalar("select count(*) from deliveries d join connections c on c.id = d.connection_id "
                          "where c.name = :n", n=conn) == 1
    assert len(running.get("/api/tickets", connection=conn).json()["tickets"]) == 1


def test_a_burst_of_distinct_and_duplicate_deliveries_is_stored_and_synced_once_each(running):
    """Concurrent requests share commits in the web process (webhooks/delivery_store.py): each
    still gets its own answer, duplicates in the same commit included."""
    conn, secret = running.add_connection(["minicoders/test-webhook"])
    payload = fixture_json("kanboard__bitbucket_issue_opened")
    sends = []
    for issue_id in range(1001, 1025):
        body = json.dumps({**payload, "issue": {**payload["issue"], "id": issue_id}}).encode()
        sends += [(body, str(uuid.uuid4()))] * 2  # Bitbucket's retry of the same delivery
    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(lambda s: running.deliver(conn, "issue:created", s[0], secret, s[1]), sends))
    assert {r.status_code for r in responses} == {202}
    ids = [r.json()["delivery"] for r in responses]
    assert all(ids[i] == ids[i + 1] for i in range(0, len(ids), 2))  # a duplicate names the first
    assert len(set(ids)) == 24
    for delivery in set(ids):
        assert running.wait_processed(delivery) == "processed"
    assert running.scalar("select count(*) from deliveries d join connections c on c.id = d.connection_id "
                          "where c.name = :n", n=conn) == 24
    assert len(running.get("/api/tickets", connection=conn).json()["tickets"]) == 24


def test_the_web_process_runs_the_production_worker_class(running):
    """config/gunicorn.conf.py, read by the same gunicorn command as the Procfile's: gevent on
    PostgreSQL, threads on SQLite (whose driver would stall every greenlet of a process)."""
    logs = "".join(p.read_text(errors="replace") for p in running.stack.log_dir.glob("web-*.log"))
    assert f"Using worker: {'gevent' if running.kind == 'services' else 'gthread'}" in logs


def test_same_comment_redelivered_under_a_new_request_id_is_not_noted_twice(running):
    name = "kanboard__bitbucket_comment_created"
    conn, secret = running.add_connection(["minicoders/test-webhook"])
    ids = []
    for _ in range(2):  # Bitbucket's retry may or may not keep X-Request-UUID
        r = running.deliver(conn, "issue:comment_created", load_fixture(name), secret)
        ids.append(r.json()["delivery"])
        running.wait_processed(ids[-1])
    assert ids[0] != ids[1]
    ticket = _ticket(running, conn, "minicoders/test-webhook", 1)
    assert [c["body"] for c in ticket["comments"]] == ["1. step1\n2. step2"]
    link_rows = running.scalar(
        "select count(*) from comment_links cl join links l on l.id = cl.link_id "
        "join connections c on c.id = l.connection_id where c.name = :n", n=conn)
    assert link_rows == 1
    outcomes = [e["outcome"] for e in _ledger(running, conn) if e["field"] == "comment"]
    assert sorted(outcomes) == ["applied", "noop"]


def test_event_the_connection_does_not_sync_is_acknowledged_and_recorded_as_ignored(running):
    conn, secret = running.add_connection(["acme/app"])
    body = json.dumps({"push": {"changes": []}, "repository": {"full_name": "acme/app"}}).encode()
    r = running.deliver(conn, "repo:push", body, secret)
    assert r.status_code == 202
    assert running.scalar("select status from deliveries where id = :i", i=r.json()["delivery"]) == "ignored"
    entries = _ledger(running, conn)
    assert [e["outcome"] for e in entries] == ["ignored"] and "repo:push" in entries[0]["detail"]


def test_issue_of_a_repository_outside_the_connection_is_ignored_not_synced(running):
    conn, secret = running.add_connection(["acme/other"])
    r = running.deliver(conn, "issue:created", load_fixture("kanboard__bitbucket_issue_opened"), secret)
    assert running.wait_processed(r.json()["delivery"]) == "ignored"
    entries = _ledger(running, conn)
    assert entries[0]["outcome"] == "ignored" and "minicoders/test-webhook" in entries[0]["detail"]
