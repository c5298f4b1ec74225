"""Helpdesk -> Bitbucket and back, with a real worker and the simulator over HTTP."""
from __future__ import annotations

import pytest

from config import mappings
from config.enums import BITBUCKET, TARGET
from tests.integration.two_way import TwoWay, wait_for

pytestmark = pytest.mark.integration

BB_KEY = {"status": "state", "priority": "priority", "type": "kind"}




@pytest.fixture
def tw(running, simulator) -> TwoWay:
    return TwoWay.setup(running, simulator)


def test_helpdesk_edit_is_one_bitbucket_write_and_its_webhook_is_an_echo(tw):
    issue, ticket = tw.new_issue(title="Search is slow", kind="bug", priority="major")
    tw.settle()
    reads_before = len(tw.reads())

    tw.patch(ticket["id"], status="solved", priority="high", title="Search is slow on /orders")
    tw.settle()

    remote = tw.issue(issue["id"])
    assert (remote["state"], remote["priority"], remote["title"]) == ("resolved", "critical",
                                                                     "Search is slow on /orders")
    assert len(tw.writes(f"/issues/{issue['id']}/changes")) == 1, "field changes are batched into one write"
    assert len(tw.reads()) == reads_before + 1  # only this test's own GET above
    ticket = tw.ticket(ticket["id"])
    assert (ticket["status"], ticket["priority"]) == ("solved", "high")
    entries = tw.ledger()
    assert {e["field"] for e in entries if e["direction"] == "reverse" and e["outcome"] == "applied"} == {
        "status", "priority", "title"}
    assert {e["field"] for e in entries if e["outcome"] == "echo"} == {"status", "priority", "title"}
    # No ping-pong: nothing else was written after the echo.
    assert len(tw.writes(f"/issues/{issue['id']}")) == 1


@pytest.mark.parametrize("field", ["status", "priority", "type"])
def test_every_value_round_trips_both_ways_without_flapping(tw, field):
    tables = mappings.load()
    issue, ticket = tw.new_issue(title=f"round trip {field}")
    tw.settle()
    # Helpdesk -> Bitbucket, every helpdesk value.
    for value in TARGET[field]:
        writes = len(tw.writes())
        tw.patch(ticket["id"], **{field: value})
        tw.settle()
        assert tw.ticket(ticket["id"])[field] == value, "the helpdesk value must not flap"
        remote = tw.issue(issue["id"])[BB_KEY[field]]
        assert tables.to_target(field, remote) == tables.to_target(field, tables.to_bitbucket(field, value))
        assert len(tw.writes()) - writes <= 1
    # Bitbucket -> helpdesk, every Bitbucket value.
    for value in BITBUCKET[field]:
        tw.api("PUT", f"/issues/{issue['id']}", json={BB_KEY[field]: value})
        tw.settle()
        writes = len(tw.writes())
        assert tw.ticket(ticket["id"])[field] == tables.to_target(field, value)
        tw.settle()
        assert tw.issue(issue["id"])[BB_KEY[field]] == value, "a lossy map must not rewrite the origin"
        assert len(tw.writes()) == writes, "no write back to Bitbucket"


def test_duplicate_closed_in_the_helpdesk_stays_duplicate(tw):
    issue, ticket = tw.new_issue(title="Same as #1")
    tw.api("PUT", f"/issues/{issue['id']}", json={"state": "duplicate"})
    tw.settle()
    assert tw.ticket(ticket["id"])["status"] == "closed"
    tw.patch(ticket["id"], status="closed", priority="urgent")  # status unchanged: only priority moves
    tw.settle()
    remote = tw.issue(issue["id"])
    assert (remote["state"], remote["priority"]) == ("duplicate", "blocker")


def test_public_reply_is_posted_once_and_internal_note_stays_local(tw):
    issue, ticket = tw.new_issue(title="Refund failed")
    tw.settle()
    import httpx2
    base = f"{tw.running.web_url}/api/tickets/{ticket['id']}/comments"
    assert httpx2.post(base, headers=tw.running.auth, json={"body": "We are on it.", "author": "Ana (support)"}).status_code == 201
    assert httpx2.post(base, headers=tw.running.auth, json={"body": "Customer is on the enterprise plan, VIP.", "internal": True,
                                   "author": "Ana (support)"}).status_code == 201
    tw.settle()
    comments = tw.api("GET", f"/issues/{issue['id']}/comments")["values"]
    bodies = [c["content"]["raw"] for c in comments if c["content"]["raw"]]
    assert len(bodies) == 1 and bodies[0].startswith("We are on it.") and "Ana (support)" in bodies[0]
    assert all("VIP" not in b for b in bodies), "an internal note leaked to Bitbucket"
    notes = tw.ticket(ticket["id"])["comments"]
    assert [c["body"] for c in notes] == ["We are on it.", "Customer is on the enterprise plan, VIP."]
    assert [e["outcome"] for e in tw.ledger() if e["field"] == "comment" and e["direction"] == "forward"] == ["echo"]


def test_connection_can_opt_in_to_pushing_internal_notes(running, simulator):
    import httpx2
    tw = TwoWay.setup(running, simulator, "--push-internal-notes")
    issue, ticket = tw.new_issue(title="Ops note")
    httpx2.post(headers=running.auth, url=f"{running.web_url}/api/tickets/{ticket['id']}/comments",
                json={"body": "Internal: restarted the pod.", "internal": True, "author": "Ops"})
    tw.settle()
    bodies = [c["content"]["raw"] for c in tw.api("GET", f"/issues/{issue['id']}/comments")["values"]
              if c["content"]["raw"]]
    assert len(bodies) == 1 and bodies[0].startswith("Internal: restarted the pod.")


def test_rate_limit_storm_delays_but_loses_nothing(tw):
    issue, ticket = tw.new_issue(title="Storm")
    tw.settle()
    tw.state.faults.add(status=429, times=3, method="POST", path=r"/changes$")
    tw.patch(ticket["id"], priority="urgent")
    tw.settle(timeout=60)
    assert tw.issue(issue["id"])["priority"] == "blocker"
    statuses = [r.status for r in tw.state.request_log if f"{tw.repo}/issues/{issue['id']}/changes" in r.path]
    assert statuses == [429, 429, 429, 201]


def test_server_errors_are_retried(tw):
    issue, ticket = tw.new_issue(title="Flaky")
    tw.settle()
    tw.state.faults.add(status=503, times=2, method="POST", path=r"/changes$")
    tw.patch(ticket["id"], status="open")
    tw.settle(timeout=60)
    assert tw.issue(issue["id"])["state"] == "open"


def test_tracker_removed_stops_retrying_and_keeps_the_data(tw):
    issue, ticket = tw.new_issue(title="Before the sunset")
    tw.settle()
    tw.state.remove_tracker(tw.repo)
    tw.patch(ticket["id"], status="solved")
    wait_for(lambda: any("410" in (e["detail"] or "") or "removed" in (e["detail"] or "")
                         for e in tw.ledger() if e["outcome"] == "failed"), what="410 recorded")
    calls = [r for r in tw.state.request_log if f"{tw.repo}/issues/{issue['id']}/changes" in r.path]
    assert [r.status for r in calls] == [410], "a 410 is never retried"
    assert tw.ticket(ticket["id"])["status"] == "solved", "local data is kept"
    listing = tw.running.stack.run("connection", "list").stdout
    assert "REMOVED" in [line for line in listing.splitlines() if line.startswith(tw.conn)][0]
    # Later edits are not sent at all.
    tw.patch(ticket["id"], priority="low")
    wait_for(lambda: tw.running.scalar(
        "select count(*) from outbox o join connections c on c.id = o.connection_id "
        "where c.name = :n and o.state = 'failed'", n=tw.conn) >= 2, what="second edit parked")
    assert len([r for r in tw.state.request_log if f"{tw.repo}/issues/{issue['id']}/changes" in r.path]) == 1


def test_reconcile_command_recovers_what_lost_webhooks_carried_and_rejects_bad_input(tw):
    issue, ticket = tw.new_issue(title="Changed while we were away")
    tw.settle()
    before = (tw.ticket(ticket["id"]), len(tw.ledger()))
    bad = tw.running.stack.run("reconcile", tw.conn, "--comments", "bogus", check=False)
    assert bad.returncode == 2 and "bogus" in bad.stderr
    unknown = tw.running.stack.run("reconcile", "no-such-connection", check=False)
    assert unknown.returncode == 1 and "unknown connection" in unknown.stderr
    assert (tw.ticket(ticket["id"]), len(tw.ledger())) == before, "bad input changed something"

    tw.state.faults.drop_webhooks(times=2)
    tw.api("PUT", f"/issues/{issue['id']}", json={"priority": "blocker"})
    tw.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "Found it."}})
    assert tw.state.wait_for_deliveries(10)
    # The 5-minute pass: the field comes back, the comment waits for the comment pass.
    out = tw.running.stack.run("reconcile", tw.conn, "--comments", "none").stdout
    assert "1 API call(s)" in out
    after = tw.ticket(ticket["id"])
    assert after["priority"] == mappings.load().to_target("priority", "blocker")
    assert [c["body"] for c in after["comments"]] == []
    tw.running.stack.run("reconcile", tw.conn, "--comments", "changed")
    tw.running.stack.run("reconcile", tw.conn, "--comments", "changed")  # again: nothing twice
    assert [c["body"] for c in tw.ticket(ticket["id"])["comments"]] == ["Found it."]
