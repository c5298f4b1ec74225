"""Escalating a ticket into Bitbucket (asked through the API, made by the running worker), and
conflicts decided by policy or left for a person."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx2
import pytest

from tests.integration.two_way import TwoWay, wait_for

pytestmark = pytest.mark.integration




@pytest.fixture
def tw(running, simulator) -> TwoWay:
    return TwoWay.setup(running, simulator)


def _new_ticket(tw: TwoWay, **fields) -> dict:
    body = {"title": "Checkout 500s for EU customers", "description": "Since 09:00 every EU checkout "
            "returns a 500.\nOrder ids: 1881, 1882.", "priority": "urgent", "type": "incident",
            "reporter": "jane@customer.example", **fields}
    r = httpx2.post(headers=tw.running.auth, url=f"{tw.running.web_url}/api/tickets", json=body, timeout=15)
    assert r.status_code == 201, r.text
    return r.json()


def _attach(tw: TwoWay, ticket_id: int, name: str, data: bytes) -> None:
    r = httpx2.post(headers=tw.running.auth, url=f"{tw.running.web_url}/api/tickets/{ticket_id}/attachments",
                    files={"files": (name, data, "text/plain")}, timeout=15)
    assert r.status_code == 201, r.text


def _escalate(tw: TwoWay, ticket_id: int, **body) -> httpx2.Response:
    return httpx2.post(headers=tw.running.auth, url=f"{tw.running.web_url}/api/tickets/{ticket_id}/escalate",
                       json={"repo": tw.repo, **body}, timeout=15)


def _queued(tw: TwoWay, ticket_id: int, **body) -> dict:
    """Ask for the escalation: answered at once (202), before any Bitbucket call."""
    r = _escalate(tw, ticket_id, **body)
    assert r.status_code == 202, r.text
    assert r.headers["Location"] == f"/api/tickets/{ticket_id}" == r.json()["ticket"]
    return r.json()["escalation"]


def _escalated(tw: TwoWay, ticket_id: int, timeout: float = 60.0) -> dict:
    """The ticket once the worker has escalated it (GET /api/tickets/ID, polled)."""
    def done():
        ticket = tw.ticket(ticket_id)
        escalation = ticket["escalation"] or {}
        assert escalation.get("state") != "failed", escalation
        return ticket if escalation.get("state") == "done" and ticket["bitbucket"] else None
    return wait_for(done, timeout, f"the escalation of ticket {ticket_id}")


def _escalations(tw: TwoWay, ticket_id: int) -> int:
    return tw.running.scalar("select count(*) from escalations where item_id = :t", t=str(ticket_id))


def test_escalation_creates_one_issue_with_context_and_attachments(tw):
    ticket = _new_ticket(tw)
    _attach(tw, ticket["id"], "har.txt", b"GET /checkout 500\n")
    httpx2.post(headers=tw.running.auth, url=f"{tw.running.web_url}/api/tickets/{ticket['id']}/comments",
                json={"body": "Happens on Safari and Chrome.", "author": "Ana"})
    escalation = _queued(tw, ticket["id"], include_comments=True, attachments=["har.txt"])
    assert (escalation["state"], escalation["connection"], escalation["repo"]) == ("creating", tw.conn, tw.repo)
    linked = _escalated(tw, ticket["id"])  # the worker picked it up
    assert linked["escalation"]["id"] == escalation["id"] and linked["escalation"]["error"] is None
    issue = tw.issue(linked["bitbucket"]["issue_id"])
    assert issue["title"] == ticket["title"]
    assert (issue["kind"], issue["priority"]) == ("bug", "blocker")  # incident -> bug, urgent -> blocker
    raw = issue["content"]["raw"]
    assert f"#{ticket['id']}" in raw and "jane@customer.example" in raw and "Order ids: 1881" in raw
    assert "Happens on Safari and Chrome." in raw
    names = [a["name"] for a in tw.api("GET", f"/issues/{issue['id']}/attachments")["values"]]
    assert names == ["har.txt"]

    again = _escalate(tw, ticket["id"])
    assert again.status_code == 200 and again.json() == {
        "connection": tw.conn, "repo": tw.repo, "issue_id": issue["id"],
        "url": linked["bitbucket"]["url"], "created": False}
    tw.settle()
    assert len(tw.api("GET", "/issues")["values"]) == 1
    linked = tw.ticket(ticket["id"])
    assert linked["bitbucket"]["issue_id"] == issue["id"]
    assert linked["status"] == "new" and linked["title"] == ticket["title"], "the echo changed nothing"
    assert any(e["outcome"] == "echo" for e in tw.ledger())


def test_concurrent_escalations_of_one_ticket_yield_one_issue(tw):
    # Four requests through the API (one row, queued for the worker) race two `bbsync
    # escalate` runs, which escalate in their own processes: all against the worker's claim.
    ticket = _new_ticket(tw, title="Concurrent")

    def cli():
        return tw.running.stack.run("escalate", str(ticket["id"]), "--repo", tw.repo).stdout

    with ThreadPoolExecutor(6) as pool:
        commands = [pool.submit(cli) for _ in range(2)]
        results = list(pool.map(lambda _: _escalate(tw, ticket["id"]), range(4)))
        printed = [c.result() for c in commands]
    assert {r.status_code for r in results} <= {200, 202}, [r.text for r in results]
    assert len({r.json()["escalation"]["id"] for r in results if r.status_code == 202}) <= 1
    issue_id = _escalated(tw, ticket["id"])["bitbucket"]["issue_id"]
    assert {r.json()["issue_id"] for r in results if r.status_code == 200} <= {issue_id}
    assert [re.search(rf"escalated: {tw.repo}#(\d+)", out).group(1) for out in printed] == [str(issue_id)] * 2
    assert len(tw.api("GET", "/issues")["values"]) == 1
    assert _escalations(tw, ticket["id"]) == 1


def test_escalation_failing_mid_upload_is_retried_by_the_worker_without_a_second_issue(tw):
    ticket = _new_ticket(tw, title="Upload breaks")
    _attach(tw, ticket["id"], "a.log", b"first")
    _attach(tw, ticket["id"], "b.log", b"second")
    tw.state.faults.add(status=500, times=1000, method="POST", path=r"/attachments$")
    _queued(tw, ticket["id"], attachments=["a.log", "b.log"])

    def failing():
        escalation = tw.ticket(ticket["id"])["escalation"]
        return escalation if (escalation["error"] or "").startswith("ServerError: ") else None
    escalation = wait_for(failing, 60, "the upload's error shown on the ticket")
    assert escalation["state"] == "creating"  # the task retries it
    assert len(tw.api("GET", "/issues")["values"]) == 1  # the issue exists, half done
    tw.state.faults.clear()
    linked = _escalated(tw, ticket["id"])
    assert linked["escalation"]["error"] is None
    assert len(tw.api("GET", "/issues")["values"]) == 1
    attachments = tw.api("GET", f"/issues/{linked['bitbucket']['issue_id']}/attachments")["values"]
    names = sorted(a["name"] for a in attachments)
    assert names == ["a.log", "b.log"]


def test_an_escalation_asked_for_while_no_worker_runs_is_made_when_one_starts(tw):
    ticket = _new_ticket(tw, title="No worker")
    stack = tw.running.stack
    stack.stop("worker")
    try:
        _queued(tw, ticket["id"])
        assert tw.api("GET", "/issues")["values"] == []
        assert tw.ticket(ticket["id"])["escalation"]["state"] == "creating"
    finally:
        stack.start_worker()
    linked = _escalated(tw, ticket["id"])
    assert [i["id"] for i in tw.api("GET", "/issues")["values"]] == [linked["bitbucket"]["issue_id"]]


def test_escalation_rejects_bad_input(tw):
    ticket = _new_ticket(tw, title="Bad input")
    web = tw.running.web_url
    calls = len(tw.reads() + tw.writes())
    assert httpx2.post(headers=tw.running.auth, url=f"{web}/api/tickets/{ticket['id']}/escalate", json={}).status_code == 400
    assert httpx2.post(headers=tw.running.auth, url=f"{web}/api/tickets/{ticket['id']}/escalate", content=b"nope").status_code == 400
    assert _escalate(tw, ticket["id"], kind="epic").status_code == 400
    assert _escalate(tw, ticket["id"], attachments=["missing.txt"]).status_code == 400
    assert httpx2.post(headers=tw.running.auth, url=f"{web}/api/tickets/{ticket['id']}/escalate",
                       json={"repo": "nobody/syncs-this"}).status_code == 400
    assert httpx2.post(headers=tw.running.auth, url=f"{web}/api/tickets/{ticket['id']}/escalate",
                       json={"repo": "x/" + "y" * 300}).status_code == 400
    assert httpx2.post(headers=tw.running.auth, url=f"{web}/api/tickets/99999999/escalate", json={"repo": tw.repo}).status_code == 404
    assert _escalations(tw, ticket["id"]) == 0 and tw.ticket(ticket["id"])["escalation"] is None
    assert len(tw.reads() + tw.writes()) == calls and len(tw.api("GET", "/issues")["values"]) == 0


def test_both_sides_change_priority_latest_wins_and_the_ledger_shows_it(tw):
    issue, ticket = tw.new_issue(title="Priority fight", priority="major")
    tw.settle()
    # Hold the helpdesk's push back (more failures than one task attempt retries) so that
    # Bitbucket's edit is processed first.
    tw.state.faults.add(status=503, times=6, method="POST", path=r"/changes$")
    tw.patch(ticket["id"], priority="low")
    tw.api("PUT", f"/issues/{issue['id']}", json={"priority": "critical"})
    tw.settle(timeout=60)
    conflicts = [e for e in tw.ledger() if e["outcome"] == "conflict"]
    assert conflicts and conflicts[0]["field"] == "priority" and conflicts[0]["policy"] == "latest_wins"
    c = conflicts[0]
    assert (c["bitbucket_value"], c["target_value"]) == ("critical", "low")
    # Converged, to the winner's value.
    final_ticket, final_issue = tw.ticket(ticket["id"])["priority"], tw.issue(issue["id"])["priority"]
    assert {"bitbucket": ("high", "critical"), "dest": ("low", "minor"), "source": ("high", "critical")}[
        c["winner"]] == (final_ticket, final_issue)


def test_manual_policy_parks_the_conflict_until_a_person_resolves_it(running, simulator):
    tw = TwoWay.setup(running, simulator, "--policy", "priority=manual")
    issue, ticket = tw.new_issue(title="Manual fight", priority="major")
    tw.settle()
    tw.state.faults.add(status=503, times=6, method="POST", path=r"/changes$")
    tw.patch(ticket["id"], priority="urgent")
    tw.api("PUT", f"/issues/{issue['id']}", json={"priority": "trivial"})
    tw.settle(timeout=60)
    open_ = running.get("/api/conflicts", connection=tw.conn, state="open").json()["conflicts"]
    assert [(c["field"], c["bitbucket_value"], c["target_value"]) for c in open_] == [
        ("priority", "trivial", "urgent")]
    # Nothing moved while it is open.
    assert (tw.ticket(ticket["id"])["priority"], tw.issue(issue["id"])["priority"]) == ("urgent", "trivial")
    assert "priority" in running.stack.run("conflicts", "list", tw.conn).stdout

    bad = httpx2.post(headers=running.auth, url=f"{running.web_url}/api/conflicts/{open_[0]['id']}/resolve", json={"take": "nope"})
    assert bad.status_code == 400
    r = httpx2.post(headers=running.auth, url=f"{running.web_url}/api/conflicts/{open_[0]['id']}/resolve",
                    json={"take": "target", "resolved_by": "lead@acme.example"})
    assert r.status_code == 200, r.text
    tw.settle()
    assert (tw.ticket(ticket["id"])["priority"], tw.issue(issue["id"])["priority"]) == ("urgent", "blocker")
    again = httpx2.post(headers=running.auth, url=f"{running.web_url}/api/conflicts/{open_[0]['id']}/resolve", json={"take": "bitbucket"})
    assert again.status_code == 409
    assert running.get("/api/conflicts", connection=tw.conn, state="open").json()["conflicts"] == []
    resolved = [e for e in tw.ledger() if e["outcome"] == "conflict" and e["actor"] == "lead@acme.example"]
    assert resolved and resolved[0]["winner"] == "target"


def test_bitbucket_edit_replaced_by_our_write_is_a_conflict_decided_by_its_own_time(tw):
    """The write goes out first and replaces a Bitbucket edit whose webhook is still queued:
    that webhook is older than our write, yet it is a conflict, not just a stale event."""
    issue, ticket = tw.new_issue(title="Crossed edits", priority="major")
    tw.settle()
    stack = tw.running.stack
    stack.stop("worker")  # queue both sides' work while no worker runs
    try:
        tw.patch(ticket["id"], priority="low")
        tw.api("PUT", f"/issues/{issue['id']}", json={"priority": "critical"})
        assert tw.state.wait_for_deliveries(10)
    finally:
        stack.start_worker()
    tw.settle(timeout=60)
    conflicts = [e for e in tw.ledger() if e["outcome"] == "conflict" and e["field"] == "priority"]
    assert len(conflicts) == 1, tw.ledger()
    # Bitbucket's edit came after the helpdesk's: latest wins restores it on both sides.
    assert (conflicts[0]["winner"], conflicts[0]["bitbucket_value"]) == ("source", "critical")
    assert (tw.ticket(ticket["id"])["priority"], tw.issue(issue["id"])["priority"]) == ("high", "critical")
