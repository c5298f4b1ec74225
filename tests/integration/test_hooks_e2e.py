"""bbsync makes its own webhooks, end to end (issue 15): the CLI registers them on the simulator,
an issue created there reaches a ticket through them, drift is found and repaired (by the CLI
and by beat's task in a real worker), and a rotated secret overlaps, then retires."""
from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import httpx2
import pytest

from tests.integration.two_way import wait_for

pytestmark = pytest.mark.integration

AUTH = ("dev@acme.example", "api-token")


def _ours(api, repo: str, conn: str) -> list[dict]:
    return [h for h in api.get(f"/repositories/{repo}/hooks").json()["values"]
            if h["description"] == f"bbsync {conn}"]


def test_hooks_register_verify_repair_rotate(running, simulator):
    state, sim_url = simulator
    repo = f"acme/hooks-{uuid.uuid4().hex[:6]}"
    conn = f"h{uuid.uuid4().hex[:10]}"
    # No --webhook-secret: bbsync makes the hook, and its secret.
    running.stack.run("connection", "add", conn, "--repo", repo, "--api-url", f"{sim_url}/2.0",
                      "--api-token", ":".join(AUTH))
    with httpx2.Client(base_url=f"{sim_url}/2.0", auth=AUTH, timeout=10) as api:
        api.post(f"/repositories/{repo}", json={"scm": "git", "has_issues": True}).raise_for_status()

        first = running.stack.run("hooks", "register", conn, "--public-url", running.web_url)
        assert f"{repo}: created; ok" in first.stdout
        again = running.stack.run("hooks", "register", conn, "--public-url", running.web_url)
        assert f"{repo}: no change; ok" in again.stdout
        [hook] = _ours(api, repo, conn)
        assert hook["url"] == f"{running.web_url}/webhooks/bitbucket/{conn}" and hook["secret_set"]

        issue = api.post(f"/repositories/{repo}/issues", json={"title": "Hooked", "kind": "bug"}).json()
        wait_for(lambda: running.scalar("select count(*) from tickets where title = 'Hooked'") == 1,
                 what="the issue's ticket")
        assert running.scalar("select hook_uuid from deliveries d join connections c on c.id = "
                              "d.connection_id where c.name = :c", c=conn) == hook["uuid"].strip("{}")

        api.put(f"/repositories/{repo}/hooks/{hook['uuid']}", json={"active": False}).raise_for_status()
        drifted = running.stack.run("hooks", "verify", conn, check=False)
        assert drifted.returncode == 1 and f"{repo}: drifted: inactive" in drifted.stdout
        listed = json.loads(running.stack.run("hooks", "list", conn, "--json").stdout)
        assert listed[0]["state"] == "drifted: inactive" and listed[0]["active"] is False
        assert running.stack.run("hooks", "repair", conn).returncode == 0
        assert running.stack.run("hooks", "verify", conn).stdout.strip() == f"{repo}: ok"

        api.delete(f"/repositories/{repo}/hooks/{hook['uuid']}").raise_for_status()
        missing = running.stack.run("hooks", "verify", conn, check=False)
        assert missing.returncode == 1 and f"{repo}: missing" in missing.stdout
        # Beat's job, run by a real worker process: it puts the hook back.
        _beat(running)
        wait_for(lambda: len(_ours(api, repo, conn)) == 1, what="beat's repair")
        assert running.stack.run("hooks", "verify", conn).returncode == 0

        old = _hook_secret(state, repo, conn)
        rotated = running.stack.run("hooks", "rotate-secret", conn, "--overlap", "4s")
        assert f"{repo}: new secret" in rotated.stdout
        new = _hook_secret(state, repo, conn)
        assert new != old
        time.sleep(1.1)  # the web process reloads a connection after a failed signature at most once a second
        body = json.dumps({"issue": {"id": issue["id"]}, "repository": {"full_name": repo}}).encode()
        assert running.deliver(conn, "repo:push", body, old).status_code == 202   # the overlap
        assert running.deliver(conn, "repo:push", body, new).status_code == 202
        wait_for(lambda: running.deliver(conn, "repo:push", body, old).status_code == 401,
                 what="the old secret retired", timeout=15)
        assert running.deliver(conn, "repo:push", body, new).status_code == 202

        running.assert_nowhere_in_clear([old, new])

        removed = running.stack.run("hooks", "remove", conn)
        assert f"{repo}: removed hook" in removed.stdout
        assert _ours(api, repo, conn) == []


def _hook_secret(state, repo: str, conn: str) -> str:
    """The secret our hook signs with, as Bitbucket (the simulator) holds it: bbsync never
    shows it."""
    workspace, slug = repo.split("/")
    with state.lock:
        [hook] = [h for h in state._repo(workspace, slug).hooks.values() if h.description == f"bbsync {conn}"]
        return hook.secret


def _beat(running) -> None:
    """Send beat's hook task to the running worker through the broker, as beat would."""
    subprocess.run([sys.executable, "-c", "from worker.queue.celery_app import app; "
                    "app.send_task('bbsync.maintain_hooks')"], env=running.stack.env, check=True, timeout=60)
