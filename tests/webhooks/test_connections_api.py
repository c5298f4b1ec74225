"""The admin's connections API (webhooks/connections_api.py): admin tokens only; create, list,
show, update, pause and resume, remove; bad input is refused whole and changes nothing; no
secret or token given is ever answered back."""
from __future__ import annotations

import json
from datetime import timedelta

import pytest
from sqlalchemy import func, select

from tests.conftest import authorized
from webhooks import connections_api, create_app
from worker import connections
from worker.db.credentials import Credential
from worker.db.models import Connection, ConnectionRepo, Delivery, WebhookSecret, utcnow
from worker.db.session import transaction

SECRET = "hand-made-hook-secret-1"
API_TOKEN = "dev@acme.example:very-secret-api-token"
LOCAL_API = "http://127.0.0.1:9/2.0"
ENDPOINTS = [("GET", "/api/connections"), ("POST", "/api/connections"), ("GET", "/api/connections/acme"),
             ("PATCH", "/api/connections/acme"), ("DELETE", "/api/connections/acme"),
             ("GET", "/api/connections/acme/hooks"), ("POST", "/api/connections/acme/hooks"),
             ("POST", "/api/connections/acme/hooks/repair"), ("DELETE", "/api/connections/acme/hooks"),
             ("POST", "/api/connections/acme/hooks/rotate")]
WRITES = [e for e in ENDPOINTS if e[0] != "GET"]


@pytest.fixture
def app(db):
    return create_app(enqueue=lambda task, arg: True)


@pytest.fixture
def admin(app):
    return authorized(app.test_client(), "admin")


@pytest.fixture
def acme(admin):
    r = admin.post("/api/connections", json={"name": "acme", "repos": ["acme/widgets"],
                                             "webhook_secrets": [SECRET], "api_url": LOCAL_API,
                                             "api_token": API_TOKEN})
    assert r.status_code == 201, r.json
    return r.json


def rows() -> dict[str, int]:
    with transaction() as session:
        return {m.__name__: session.scalar(select(func.count()).select_from(m))
                for m in (Connection, ConnectionRepo, WebhookSecret, Credential, Delivery)}


def shown(client, name: str = "acme") -> dict:
    body = client.get(f"/api/connections/{name}").json
    return {k: v for k, v in body.items() if k != "api_calls_last_hour"}


def assert_no_secret(response) -> None:
    text = response.get_data(as_text=True)
    assert SECRET not in text and "very-secret-api-token" not in text


@pytest.mark.parametrize("method, path", ENDPOINTS)
def test_every_endpoint_needs_a_token_then_an_admin_token(app, acme, method, path):
    before = rows()
    anonymous = app.test_client().open(path, method=method, json={})
    assert anonymous.status_code == 401
    scoped = authorized(app.test_client(), "acme-token", connection_names=("acme",))
    for name in ("acme", "nosuch"):  # no word about which connections exist
        r = scoped.open(path.replace("acme", name), method=method, json={})
        assert (r.status_code, r.json) == (403, {"error": "an admin token is required"})
    assert rows() == before


@pytest.mark.parametrize("method, path", WRITES)
def test_a_read_only_admin_token_may_not_write(app, acme, method, path):
    before = rows()
    reader = authorized(app.test_client(), "reader", admin=True, read_only=True)
    r = reader.open(path, method=method, json={"paused": True})
    assert r.status_code == 403 and "read-only" in r.json["error"]
    assert rows() == before and reader.get("/api/connections").status_code == 200


def test_admin_creates_lists_and_shows_a_connection_and_never_a_secret(admin, acme):
    assert acme["name"] == "acme" and acme["repos"] == ["acme/widgets"] and acme["api_url"] == LOCAL_API
    assert acme["webhook_secrets"] == 1 and acme["credential_kind"] == "api_token"
    listed = admin.get("/api/connections")
    assert [c["name"] for c in listed.json["connections"]] == ["acme"]
    one = admin.get("/api/connections/acme")
    assert one.status_code == 200 and one.json["hooks"]["secrets"]["given"] == 1
    for response in (listed, one):
        assert_no_secret(response)
    with transaction() as session:  # stored encrypted
        assert SECRET.encode() not in session.scalar(select(WebhookSecret.ciphertext))


def test_a_second_post_of_the_same_name_is_a_conflict(admin, acme):
    before, details = rows(), shown(admin)
    r = admin.post("/api/connections", json={"name": "acme", "repos": ["other/repo"], "api_token": API_TOKEN})
    assert (r.status_code, r.json) == (409, {"error": "a connection named 'acme' exists already"})
    assert rows() == before and shown(admin) == details


def test_unknown_names_answer_404(admin):
    for method in ("GET", "PATCH", "DELETE"):
        r = admin.open("/api/connections/nosuch", method=method, json={"paused": True})
        assert (r.status_code, r.json) == (404, {"error": "no connection named 'nosuch'"})
    r = admin.get("/api/connections/" + "x" * 5000)
    assert r.status_code == 404 and "xxx" not in r.json["error"]


BAD_BODIES = [
    ("malformed JSON", b'{"name": "b", ', "body must be a JSON object"),
    ("an array", b'[{"name": "b", "repos": ["b/r"]}]', "body must be a JSON object"),
    ("unknown keys", {"name": "b", "repos": ["b/r"], "secret": "x", "colour": 1}, "unknown field(s): colour, secret"),
    ("no name", {"repos": ["b/r"]}, "name is required"),
    ("no repos", {"name": "b"}, "repos is required"),
    ("empty repos", {"name": "b", "repos": []}, "at least one"),
    ("repos a string", {"name": "b", "repos": "b/r"}, "repos must be a list of strings"),
    ("a repo a number", {"name": "b", "repos": [7]}, "repos must be a list of strings"),
    ("name a number", {"name": 7, "repos": ["b/r"]}, "name must be a string"),
    ("flag a string", {"name": "b", "repos": ["b/r"], "push_internal_notes": "yes"}, "must be true or false"),
    ("mapping a list", {"name": "b", "repos": ["b/r"], "mapping": []}, "mapping must be a JSON object"),
    ("bad mapping", {"name": "b", "repos": ["b/r"], "mapping": {"status": {"to_target": {"new": "nope"}}}},
     "mapping:"),
    ("policy a number", {"name": "b", "repos": ["b/r"], "policies": {"status": 1}}, "must be a string"),
    ("bad policy", {"name": "b", "repos": ["b/r"], "policies": {"status": "loudest"}}, "policy for 'status'"),
    ("long name", {"name": "b" * 65, "repos": ["b/r"]}, "name is longer than 64"),
    ("bad name", {"name": "Bad Name", "repos": ["b/r"]}, "connection name"),
    ("NUL in name", {"name": "b\x00", "repos": ["b/r"]}, "NUL"),
    ("NUL in repo", {"name": "b", "repos": ["b/r\x00"]}, "NUL"),
    ("NUL deep", {"name": "b", "repos": ["b/r"], "mapping": {"status": {"x\x00": "y"}}}, "NUL"),
    ("a lone surrogate", b'{"name": "b", "repos": ["b/\\ud800"]}', "surrogate"),
    ("bad repo", {"name": "b", "repos": ["no-slash"]}, "is not WORKSPACE/REPO_SLUG"),
    ("too many repos", {"name": "b", "repos": [f"b/r{i}" for i in range(101)]}, "at most 100"),
    ("http to a public host", {"name": "b", "repos": ["b/r"], "api_url": "http://203.0.113.9/2.0"},
     "plain http"),
    ("a private address", {"name": "b", "repos": ["b/r"], "api_url": "https://10.1.2.3/2.0"}, "private"),
    ("link-local", {"name": "b", "repos": ["b/r"], "api_url": "https://169.254.169.254/"}, "link-local"),
    ("credentials in the URL", {"name": "b", "repos": ["b/r"], "api_url": "https://u:pw@127.0.0.1/"},
     "user name or password"),
    ("a bad api token", {"name": "b", "repos": ["b/r"], "api_token": "very-secret-api-token"}, "EMAIL:TOKEN"),
    ("a bad secret", {"name": "b", "repos": ["b/r"], "webhook_secrets": [""]}, "webhook secret"),
    ("a huge body", {"name": "b", "repos": ["b/r"], "mapping": {"x": "y" * 70000}}, "65536-byte limit"),
    ("a huge secret", {"name": "b", "repos": ["b/r"], "webhook_secrets": ["s" * 129]}, "at most 128"),
]


def _send(client, method: str, path: str, body):
    if isinstance(body, bytes):
        return client.open(path, method=method, data=body, content_type="application/json")
    return client.open(path, method=method, json=body)


@pytest.mark.parametrize("case, body, message", BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_input_to_create_is_refused_and_changes_nothing(admin, acme, case, body, message):
    before = rows()
    r = _send(admin, "POST", "/api/connections", body)
    assert r.status_code == 400 and message in r.json["error"], r.json
    assert rows() == before
    assert_no_secret(r)


@pytest.mark.parametrize("case, body, message", [
    (c, {k: v for k, v in b.items() if k != "name"} if isinstance(b, dict) else b, m)
    for c, b, m in BAD_BODIES if c not in ("no name", "no repos", "name a number", "long name", "bad name",
                                           "NUL in name")
] + [("a name", {"name": "other"}, "unknown field(s): name"), ("nothing", {}, "nothing to change"),
     ("paused a string", {"paused": "yes"}, "paused must be true or false")])
def test_bad_input_to_update_is_refused_and_changes_nothing(admin, acme, case, body, message):
    before, details = rows(), shown(admin)
    r = _send(admin, "PATCH", "/api/connections/acme", body)
    assert r.status_code == 400 and message in r.json["error"], r.json
    assert rows() == before and shown(admin) == details
    assert_no_secret(r)


def test_an_update_keeps_what_it_does_not_name(admin, acme):
    r = admin.patch("/api/connections/acme", json={"policies": {"status": "manual"}, "push_internal_notes": True})
    assert r.status_code == 200, r.json
    assert r.json["repos"] == ["acme/widgets"] and r.json["api_url"] == LOCAL_API
    assert r.json["policies"] == {"status": "manual"} and r.json["push_internal_notes"] is True
    assert r.json["webhook_secrets"] == 1 and r.json["credential_kind"] == "api_token"
    r = admin.patch("/api/connections/acme", json={"repos": ["acme/widgets", "acme/gadgets"],
                                                   "webhook_secrets": [SECRET, "the-new-one"]})
    assert sorted(r.json["repos"]) == ["acme/gadgets", "acme/widgets"] and r.json["webhook_secrets"] == 2
    assert r.json["policies"] == {"status": "manual"}
    assert_no_secret(r)


def _deliveries(conn_name: str, ages: list[int]) -> list[str]:
    """Received deliveries of `conn_name`, received `ages` seconds ago; their ids."""
    ids = []
    with transaction() as session:
        conn = connections.get(session, conn_name)
        for n, age in enumerate(ages):
            ids.append(f"{conn_name}{n}")
            session.add(Delivery(id=ids[-1], connection_id=conn.id, request_uuid=ids[-1], event_key="issue:updated",
                                 attempt=1, body="{}", status="received",
                                 received_at=utcnow() - timedelta(seconds=age)))
    return ids


def test_pause_then_resume_queues_what_waited_oldest_first(admin, acme, monkeypatch):
    jobs: list[tuple[str, str | int]] = []
    monkeypatch.setattr(connections_api, "enqueue", lambda task, arg: jobs.append((task, arg)))
    admin.post("/api/connections", json={"name": "globex", "repos": ["globex/r"]})
    paused = admin.patch("/api/connections/acme", json={"paused": True})
    assert paused.status_code == 200 and paused.json["paused_at"] is not None
    assert admin.patch("/api/connections/acme", json={"paused": True}).json["paused_at"] == paused.json["paused_at"]
    newer, older = _deliveries("acme", [5, 50])
    _deliveries("globex", [10])
    assert jobs == []
    resumed = admin.patch("/api/connections/acme", json={"paused": False})
    assert resumed.status_code == 200 and resumed.json["paused_at"] is None
    assert jobs == [("process_delivery", older), ("process_delivery", newer)]
    admin.patch("/api/connections/acme", json={"paused": False})  # not paused: nothing to resume
    assert len(jobs) == 2


def test_delete_removes_the_connection_and_its_data(admin, acme):
    _deliveries("acme", [1, 2])
    r = admin.delete("/api/connections/acme")
    assert r.status_code == 200, r.json
    assert r.json["removed"] == "acme" and r.json["hooks_deleted"] == 0 and r.json["counts"]["deliveries"] == 2
    assert rows() == {"Connection": 0, "ConnectionRepo": 0, "WebhookSecret": 0, "Credential": 0, "Delivery": 0}
    assert admin.get("/api/connections/acme").status_code == 404
    assert admin.delete("/api/connections/acme").status_code == 404


def test_a_connection_made_through_the_api_is_what_the_command_would_make(admin):
    body = {"name": "initech", "repos": ["ini/tech"], "target": "local", "api_url": LOCAL_API,
            "policies": {"title": "bitbucket_wins"}, "mapping": {}, "push_internal_notes": False}
    made = admin.post("/api/connections", data=json.dumps(body), content_type="application/json")
    assert made.status_code == 201
    with transaction() as session:
        conn = connections.get(session, "initech")
        assert conn.policies == {"title": "bitbucket_wins"} and conn.credential_id is None
        assert connections.details(session, conn)["repos"] == made.json["repos"]
