"""API tokens through real HTTP (gunicorn, its two worker processes): made and revoked with the
`bbsync` command as a user would, refused or scoped in every web process."""
from __future__ import annotations

import httpx2
import pytest

pytestmark = pytest.mark.integration


def _token(running, *argv: str) -> str:
    return running.stack.run("token", "create", *argv).stdout.strip().splitlines()[-1]


def test_tokens_are_scoped_and_a_revoked_one_is_refused_by_every_web_process(running):
    mine, _ = running.add_connection(["tok/mine"])
    other, _ = running.add_connection(["tok/other"])
    name = f"agent-{mine}"
    token = _token(running, name, "--connection", mine)
    ledger_rows = running.scalar("select count(*) from ledger")
    with httpx2.Client(base_url=running.web_url, timeout=15) as anonymous, \
            httpx2.Client(base_url=running.web_url, timeout=15,
                          headers={"Authorization": f"Bearer {token}"}) as agent:
        r = anonymous.get("/api/ledger", params={"connection": mine})
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
        assert anonymous.post("/api/tickets", json={"title": "x"}).status_code == 401
        # Several requests, so that both web processes answer some of them.
        for _ in range(8):
            assert agent.get("/api/ledger", params={"connection": mine}).status_code == 200
            assert agent.get("/api/ledger", params={"connection": other}).status_code == 404
        running.stack.run("token", "revoke", name)
        for _ in range(8):  # (429 once this address has failed often: refused all the same)
            assert agent.get("/api/ledger", params={"connection": mine}).status_code in (401, 429)
    assert running.scalar("select count(*) from ledger") == ledger_rows


def test_a_tenants_ticket_is_invisible_to_another_tenant_over_http(running):
    a, _ = running.add_connection(["iso/a"])
    b, _ = running.add_connection(["iso/b"])
    token_a = _token(running, f"iso-{a}", "--connection", a)
    token_b = _token(running, f"iso-{b}", "--connection", b)
    with httpx2.Client(base_url=running.web_url, timeout=15, headers={"Authorization": f"Bearer {token_a}"}) as ta, \
            httpx2.Client(base_url=running.web_url, timeout=15, headers={"Authorization": f"Bearer {token_b}"}) as tb:
        made = ta.post("/api/tickets", json={"title": "Tenant A's"})
        assert made.status_code == 201
        ticket = made.json()["id"]
        assert ta.get(f"/api/tickets/{ticket}").status_code == 200
        seen, absent = tb.get(f"/api/tickets/{ticket}"), tb.get("/api/tickets/999999999")
        assert seen.status_code == absent.status_code == 404
        assert seen.json()["error"].replace(str(ticket), "X") == absent.json()["error"].replace("999999999", "X")
        assert tb.patch(f"/api/tickets/{ticket}", json={"title": "B was here"}).status_code == 404
        assert ticket not in [t["id"] for t in tb.get("/api/tickets").json()["tickets"]]
        assert ta.get(f"/api/tickets/{ticket}").json()["title"] == "Tenant A's"


def test_no_token_or_secret_reaches_a_log_or_a_table_in_clear(running):
    """Everything the stack's processes logged so far (web, worker, commands) and every text
    column of the database: neither an API token nor a webhook secret in clear."""
    conn, secret = running.add_connection(["tok/logs"])
    token = _token(running, f"scan-{conn}", "--connection", conn)
    with httpx2.Client(base_url=running.web_url, timeout=15) as client:
        assert client.get("/api/ledger", params={"connection": conn},
                          headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.get("/api/ledger", params={"connection": conn},
                          headers={"Authorization": f"Bearer {token[:-1]}x"}).status_code in (401, 429)
    running.stack.run("token", "revoke", f"scan-{conn}")
    running.assert_nowhere_in_clear([token, token[:-1] + "x", secret, running.auth["Authorization"].split()[1]])
