"""The admin's connections API over real HTTP (issue 15), against gunicorn, a worker and the
simulator on a loopback port: a connection made with POST gets its hooks through the API, drift
is seen and repaired, a pause holds an issue's delivery until the resume queues it, and DELETE
removes the hook at Bitbucket and the data here."""
from __future__ import annotations

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


def test_connection_made_hooked_paused_resumed_and_removed_through_the_api(running, simulator):
    state, sim_url = simulator
    repo = f"acme/capi-{uuid.uuid4().hex[:6]}"
    conn = f"a{uuid.uuid4().hex[:10]}"
    with httpx2.Client(base_url=f"{running.web_url}/api", headers=running.auth, timeout=30) as web, \
            httpx2.Client(base_url=f"{sim_url}/2.0", auth=AUTH, timeout=10) as api:
        api.post(f"/repositories/{repo}", json={"scm": "git", "has_issues": True}).raise_for_status()
        made = web.post("/connections", json={"name": conn, "repos": [repo], "api_url": f"{sim_url}/2.0",
                                  "api_token": ":".join(AUTH)})
        assert made.status_code == 201, made.text
        assert made.json()["credential_kind"] == "api_token" and "api-token" not in made.text
        assert web.post("/connections", json={"name": conn, "repos": [repo]}).status_code == 409

        hooked = web.post(f"/connections/{conn}/hooks", json={"public_url": running.web_url})
        assert hooked.status_code == 200, hooked.text
        assert hooked.json()["ok"] is True and hooked.json()["repos"][0]["actions"] == ["created"]
        [hook] = _ours(api, repo, conn)
        assert web.get(f"/connections/{conn}/hooks").json()["ok"] is True

        api.put(f"/repositories/{repo}/hooks/{hook['uuid']}", json={"active": False}).raise_for_status()
        drifted = web.get(f"/connections/{conn}/hooks").json()
        assert drifted["ok"] is False and drifted["repos"][0]["state"] == "drifted: inactive"
        assert web.post(f"/connections/{conn}/hooks/repair").json()["ok"] is True
        assert web.get(f"/connections/{conn}/hooks").json()["ok"] is True
        assert _ours(api, repo, conn)[0]["active"] is True

        assert web.patch(f"/connections/{conn}", json={"paused": True}).json()["paused_at"] is not None
        api.post(f"/repositories/{repo}/issues", json={"title": f"Held {conn}", "kind": "bug"}).raise_for_status()
        wait_for(lambda: running.scalar("select count(*) from deliveries d join connections c on "
                                        "c.id = d.connection_id where c.name = :c and d.status = 'received'",
                                        c=conn) == 1, what="the delivery stored")
        time.sleep(1.0)  # a worker had its chance
        assert running.scalar("select count(*) from tickets where title = :t", t=f"Held {conn}") == 0
        resumed = web.patch(f"/connections/{conn}", json={"paused": False})
        assert resumed.status_code == 200 and resumed.json()["paused_at"] is None
        wait_for(lambda: running.scalar("select count(*) from tickets where title = :t", t=f"Held {conn}") == 1,
                 what="the held issue's ticket, once resumed")

        removed = web.delete(f"/connections/{conn}")
        assert removed.status_code == 200, removed.text
        assert removed.json()["hooks_deleted"] == 1 and removed.json()["counts"]["deliveries"] == 1
        assert _ours(api, repo, conn) == []
        assert running.scalar("select count(*) from connections where name = :c", c=conn) == 0
        assert web.get(f"/connections/{conn}").status_code == 404
        assert conn not in [c["name"] for c in web.get("/connections").json()["connections"]]
