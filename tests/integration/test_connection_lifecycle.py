"""A connection paused, resumed and removed, end to end (issue 15): while paused, Bitbucket's
webhooks are verified, stored and acknowledged and nothing is processed (not even by the
beat's sweeper); on resume they are applied in order; `connection remove` deletes its hooks at
Bitbucket first, then its data."""
from __future__ import annotations

import subprocess
import sys
import time
import uuid

import httpx2
import pytest
from sqlalchemy import text

from tests.integration.two_way import wait_for

pytestmark = pytest.mark.integration

AUTH = ("dev@acme.example", "api-token")


def _connection(running, sim_url: str, api) -> tuple[str, str]:
    repo = f"acme/life-{uuid.uuid4().hex[:6]}"
    conn = f"l{uuid.uuid4().hex[:10]}"
    running.stack.run("connection", "add", conn, "--repo", repo, "--api-url", f"{sim_url}/2.0",
                      "--api-token", ":".join(AUTH))
    api.post(f"/repositories/{repo}", json={"scm": "git", "has_issues": True}).raise_for_status()
    running.stack.run("hooks", "register", conn, "--public-url", running.web_url)
    return conn, repo


def _counts(running, conn: str) -> dict:
    with running.engine.connect() as c:
        rows = c.execute(text(
            "select d.status, count(*), sum(d.runs) from deliveries d join connections c on c.id = d.connection_id "
            "where c.name = :c group by d.status"), {"c": conn}).all()
    return {status: (n, runs) for status, n, runs in rows}


def test_a_paused_connection_stores_and_waits_then_catches_up_in_order(running, simulator):
    state, sim_url = simulator
    with httpx2.Client(base_url=f"{sim_url}/2.0", auth=AUTH, timeout=10) as api:
        conn, repo = _connection(running, sim_url, api)
        paused = running.stack.run("connection", "pause", conn)
        assert "paused" in paused.stdout
        issue = api.post(f"/repositories/{repo}/issues", json={"title": "Paused", "kind": "bug",
                                                               "priority": "major"}).json()
        base = f"/repositories/{repo}/issues/{issue['id']}"
        api.put(base, json={"priority": "critical"}).raise_for_status()
        api.post(f"{base}/comments", json={"content": {"raw": "while paused"}}).raise_for_status()
        api.put(base, json={"state": "resolved", "priority": "trivial"}).raise_for_status()
        assert state.wait_for_deliveries(10)
        assert {d.status for d in state.deliveries if conn in d.url} == {202}   # acknowledged
        wait_for(lambda: _counts(running, conn).get("received", (0, 0))[0] == 4, what="4 stored")
        # The sweeper (beat's requeue-pending) leaves them alone too.
        subprocess.run([sys.executable, "-c", "from worker.queue.celery_app import app; "
                        "app.send_task('bbsync.requeue_pending')"], env=running.stack.env, check=True, timeout=60)
        time.sleep(2.0)
        assert _counts(running, conn) == {"received": (4, 0)}    # none processed, no run counted
        assert running.scalar("select count(*) from tickets where title = 'Paused'") == 0

        resumed = running.stack.run("connection", "resume", conn)
        assert "4 waiting job(s) queued" in resumed.stdout
        wait_for(lambda: _counts(running, conn).get("processed", (0, 0))[0] == 4, what="caught up")
        ticket = running.get("/api/tickets", connection=conn, bitbucket_repo=repo,
                             bitbucket_issue=issue["id"]).json()["tickets"][0]
        assert (ticket["status"], ticket["priority"]) == ("solved", "low")    # the last edit won
        assert [c["body"] for c in ticket["comments"]] == ["while paused"]


def test_remove_deletes_the_hooks_at_bitbucket_then_the_data(running, simulator):
    state, sim_url = simulator
    with httpx2.Client(base_url=f"{sim_url}/2.0", auth=AUTH, timeout=10) as api:
        conn, repo = _connection(running, sim_url, api)
        api.post(f"/repositories/{repo}/issues", json={"title": "Doomed", "kind": "bug"}).raise_for_status()
        wait_for(lambda: _counts(running, conn).get("processed", (0, 0))[0] == 1, what="processed")

        refused = running.stack.run("connection", "remove", conn, check=False)
        assert refused.returncode == 1 and "--yes" in refused.stderr
        assert len(api.get(f"/repositories/{repo}/hooks").json()["values"]) == 1

        removed = running.stack.run("connection", "remove", conn, "--yes")
        assert "1 webhook(s) deleted at Bitbucket" in removed.stdout and "1 tickets" in removed.stdout
        assert api.get(f"/repositories/{repo}/hooks").json()["values"] == []
        assert running.scalar("select count(*) from connections where name = :c", c=conn) == 0
        assert running.scalar("select count(*) from tickets where title = 'Doomed'") == 0
        gone = running.stack.run("connection", "show", conn, check=False)
        assert gone.returncode == 1 and "no connection named" in gone.stderr
