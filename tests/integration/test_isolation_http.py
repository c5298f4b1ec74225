"""Tenant isolation through real HTTP (gunicorn, its worker processes, a real Celery worker):
two connections, a token of each. Every `/api` endpoint of the app is tried with no token, a
wrong one, a revoked one, the other tenant's ids and names, and a read-only token; each answers
as the Security section says, and a count of every table's rows and of the Bitbucket
simulator's calls shows that nothing changed."""
from __future__ import annotations

import re
import uuid

import httpx2
import pytest
from flask import Flask
from sqlalchemy import func, inspect, select

from tests.integration.two_way import wait_for

pytestmark = pytest.mark.integration

WRITES = {"POST", "PUT", "PATCH", "DELETE"}


def _api_routes() -> list[tuple[str, str]]:
    """Every /api rule of the web app, as (method, template), read from its blueprints."""
    from webhooks import connections_api, hooks_api, operator, tickets
    app = Flask("routes")
    for module in (tickets, operator, connections_api, hooks_api):
        app.register_blueprint(module.bp)
    return sorted((method, rule.rule) for rule in app.url_map.iter_rules() if rule.rule.startswith("/api")
                  for method in rule.methods - {"HEAD", "OPTIONS"})


def _fill(template: str, values: dict) -> str:
    return re.sub(r"<(?:[^:>]+:)?([^>]+)>", lambda m: str(values[m.group(1)]), template)


def _counts(running) -> dict[str, int]:
    from worker.db.schema import metadata
    with running.engine.connect() as c:
        present = set(inspect(c).get_table_names())
        return {t.name: c.execute(select(func.count()).select_from(t)).scalar()
                for t in metadata.sorted_tables if t.name in present}


def _send(web, method: str, template: str, path: str, query: dict, token: str) -> httpx2.Response:
    """A well-formed request for the endpoint, so that only who asks can stop it."""
    if template.endswith("/attachments") and method == "POST":
        kw = {"files": {"files": ("notes.txt", b"taken over", "text/plain")}}
    else:
        body = {"take": "target"} if template.endswith("/resolve") else \
            {"body": "taken over"} if template.endswith("/comments") else \
            {"repo": "iso/elsewhere"} if template.endswith("/escalate") else \
            {"title": "taken over", "connection": query["connection"]}
        kw = {"json": body}
    return web.request(method, path, params=query, headers={"Authorization": f"Bearer {token}"}, **kw)


def _open_conflict(running, connection: str) -> int:
    """An open conflict of `connection` (as the worker records one), for the other tenant to
    try to resolve."""
    from sqlalchemy.orm import Session

    from worker.db.models import Conflict, Connection, LedgerEntry, Link
    with Session(running.engine) as session, session.begin():
        conn_id = session.scalar(select(Connection.id).where(Connection.name == connection))
        link = Link(connection_id=conn_id, bitbucket_repo="iso/conflict", bitbucket_issue_id=1, target_id="1")
        entry = LedgerEntry(connection_id=conn_id, direction="forward", outcome="conflict", field="status")
        session.add_all([link, entry])
        session.flush()
        conflict = Conflict(connection_id=conn_id, link_id=link.id, field="status", ledger_id=entry.id,
                            bitbucket_value="resolved", target_value="open")
        session.add(conflict)
        session.flush()
        return conflict.id


def _token(running, *argv: str) -> str:
    return running.stack.run("token", "create", *argv).stdout.strip().splitlines()[-1]


def test_every_endpoint_keeps_tenants_apart_over_http(running, simulator):
    state, sim_url = simulator
    a, _ = running.add_connection([f"iso/a-{uuid.uuid4().hex[:6]}"])
    b, secret_b = running.add_connection([f"iso/b-{uuid.uuid4().hex[:6]}"])
    suffix = uuid.uuid4().hex[:6]
    token_a = _token(running, f"a-{suffix}", "--connection", a)
    token_b = _token(running, f"b-{suffix}", "--connection", b)
    read_only_a = _token(running, f"ro-{suffix}", "--connection", a, "--read-only")
    revoked = _token(running, f"gone-{suffix}", "--admin")
    running.stack.run("token", "revoke", f"gone-{suffix}")

    with httpx2.Client(base_url=running.web_url, timeout=15) as web:
        made = web.post("/api/tickets", json={"title": "B's ticket"}, headers={"Authorization": f"Bearer {token_b}"})
        assert made.status_code == 201
        body = b'{"issue": {"id": 1}, "repository": {"full_name": "x/y"}}'
        delivery = running.deliver(b, "repo:push", body, secret_b).json()["delivery"]
        wait_for(lambda: running.scalar("select status from deliveries where id = :d", d=delivery) != "received",
                 what="b's delivery handled")
        theirs = {"ticket_id": made.json()["id"], "delivery_id": delivery, "action": "replay",
                  "conflict_id": _open_conflict(running, b), "name": b}
        routes = _api_routes()
        assert len(routes) == 24   # a new endpoint is tried here by being listed
        before, calls_before = _counts(running), len(state.request_log)

        for method, template in routes:
            path = _fill(template, {**theirs, "name": "notes.txt" if "attachments" in template else b})
            query = {"connection": b}
            for header in (None, "Bearer bbs_" + "A" * 43, f"Bearer {revoked}", f"Bearer {token_a}x"):
                r = web.request(method, path, params=query, json={"title": "x"},
                                headers={"Authorization": header} if header else {})
                assert r.status_code in (401, 429), (method, path, header, r.status_code)
            as_a = _send(web, method, template, path, query, token_a)
            if template.startswith("/api/connections"):
                assert as_a.status_code == 403, (method, path)       # admins only, whichever name
                assert as_a.json() == {"error": "an admin token is required"}
            elif "<" in template or template != "/api/tickets" or method == "POST":
                assert as_a.status_code == 404, (method, path, as_a.status_code, as_a.text)
            if method in WRITES:
                ro = _send(web, method, template, path, query, read_only_a)
                assert ro.status_code == 403, (method, path, ro.status_code)

        listed = web.get("/api/tickets", headers={"Authorization": f"Bearer {token_a}"}).json()["tickets"]
        assert theirs["ticket_id"] not in [t["id"] for t in listed]
        assert _counts(running) == before
        assert len(state.request_log) == calls_before      # no Bitbucket call was made
        mine = web.get(f"/api/tickets/{theirs['ticket_id']}", headers={"Authorization": f"Bearer {token_b}"})
        assert mine.json()["title"] == "B's ticket"
