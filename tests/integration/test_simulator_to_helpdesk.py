"""Edits made in the Bitbucket simulator arrive as real signed webhooks and become tickets."""
from __future__ import annotations

import uuid

import httpx2
import pytest

from tests.integration.two_way import wait_for

pytestmark = pytest.mark.integration

AUTH = ("dev@acme.example", "api-token")




def test_issue_edits_in_bitbucket_reach_the_helpdesk(running, simulator):
    state, sim_url = simulator
    repo = f"acme/widgets-{uuid.uuid4().hex[:6]}"
    conn, secret = running.add_connection([repo])
    with httpx2.Client(base_url=f"{sim_url}/2.0", auth=AUTH, timeout=10) as api:
        base = f"/repositories/{repo}"
        assert api.post(base, json={"scm": "git", "has_issues": True}).status_code == 200
        api.post(f"{base}/hooks", json={"url": f"{running.web_url}/webhooks/bitbucket/{conn}", "secret": secret,
                                "active": True, "events": ["issue:created", "issue:updated",
                                                           "issue:comment_created"]}).raise_for_status()
        issue = api.post(f"{base}/issues", json={"title": "Login loop", "kind": "bug", "priority": "blocker",
                                         "content": {"raw": "Customers are sent back to /login."}}).json()
        api.put(f"{base}/issues/{issue['id']}", json={"state": "on hold", "priority": "trivial"}).raise_for_status()
        api.post(f"{base}/issues/{issue['id']}/comments", json={"content": {"raw": "Waiting on the IdP."}}).raise_for_status()
        api.post(f"{base}/issues/{issue['id']}/changes", json={"changes": {"state": {"new": "wontfix"}},
                                                        "message": {"raw": "Not ours to fix."}}).raise_for_status()
    assert state.wait_for_deliveries(10)
    assert {d.status for d in state.deliveries if conn in d.url} == {202}

    def settled():
        counts = running.get("/api/deliveries", connection=conn).json()["counts"]
        return counts.get("processed", 0) == 4 and not counts.get("received")
    wait_for(settled, what="deliveries processed")

    ticket = running.get("/api/tickets", connection=conn, bitbucket_repo=repo,
                         bitbucket_issue=issue["id"]).json()["tickets"][0]
    assert (ticket["title"], ticket["status"], ticket["priority"], ticket["type"]) == (
        "Login loop", "closed", "low", "problem")
    assert ticket["description"] == "Customers are sent back to /login."
    assert ticket["reporter"] == "dev@acme.example"
    assert [(c["body"], c["internal"]) for c in ticket["comments"]] == [
        ("Waiting on the IdP.", True), ("Not ours to fix.", True)]
    assert ticket["bitbucket"]["url"].endswith(f"/{repo}/issues/{issue['id']}")
