"""Text and ids the database could not store, at the web process's doors, on SQLite and on
PostgreSQL (where each would otherwise be a 500 or a failed delivery): the helpdesk API refuses
them with a 400 its caller can act on, the receiver refuses ids out of range, and what is
accepted is stored exactly."""
from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from tests.conftest import authorized, load_fixture
from webhooks import create_app
from webhooks.signatures import sign
from worker import connections
from worker.db.helpdesk import Ticket, TicketComment
from worker.db.models import Delivery, Link, OutboxEntry
from worker.db.session import get_engine, transaction
from worker.engine.events import MAX_ID

SECRET = "s3cret"
REPO = "minicoders/test-webhook"
BODY = load_fixture("kanboard__bitbucket_issue_opened")
COMMENT = load_fixture("kanboard__bitbucket_comment_created")


@pytest.fixture(params=["sqlite", "postgresql"])
def client(request):
    request.getfixturevalue("db" if request.param == "sqlite" else "postgres_db")
    with transaction() as session:
        connections.upsert(session, connections.ConnectionSpec(
            name="acme", repos=(REPO,), webhook_secrets=(SECRET,)))
    app = create_app(enqueue=lambda task, arg: True)
    yield authorized(app.test_client())
    # Before the database is dropped: a pooled connection it kills would warn when collected.
    app.extensions["bbsync"].deliveries.engine.dispose()
    get_engine().dispose()


def _count(model) -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def _deliver(client, body: bytes, event_key: str = "issue:created"):
    return client.post("/webhooks/bitbucket/acme", data=body, headers={
        "X-Event-Key": event_key, "X-Hub-Signature": sign(SECRET, body),
        "Content-Type": "application/json"})


def _post_json(client, path: str, raw: bytes, method: str = "post", **headers):
    """Raw bytes, so that a JSON escape like \\ud800 reaches the server as written."""
    return getattr(client, method)(path, data=raw, content_type="application/json", headers=headers)


# --- the receiver -----------------------------------------------------------------------------

@pytest.mark.parametrize("issue_id", [0, -1, MAX_ID + 1, 2**63, 10**30])
def test_an_issue_id_out_of_postgresqls_range_is_400_and_nothing_is_stored(client, issue_id):
    payload = json.loads(BODY)
    payload["issue"]["id"] = issue_id
    r = _deliver(client, json.dumps(payload).encode())
    assert r.status_code == 400
    assert "issue.id must be an integer from 1 to 2147483647" in r.get_json()["error"]
    assert _count(Delivery) == 0


@pytest.mark.parametrize("comment_id", [0, MAX_ID + 1])
def test_a_comment_id_out_of_range_is_400(client, comment_id):
    payload = json.loads(COMMENT)
    payload["comment"]["id"] = comment_id
    r = _deliver(client, json.dumps(payload).encode(), "issue:comment_created")
    assert r.status_code == 400 and "comment.id" in r.get_json()["error"]
    assert _count(Delivery) == 0


def test_the_largest_ids_are_accepted(client):
    payload = json.loads(COMMENT)
    payload["issue"]["id"] = payload["comment"]["id"] = MAX_ID
    assert _deliver(client, json.dumps(payload).encode(), "issue:comment_created").status_code == 202


def test_a_repository_name_with_nul_is_stored_under_a_storable_issue_key(client):
    body = BODY.replace(b'"full_name": "minicoders/test-webhook"', b'"full_name": "minicoders/test-\\u0000webhook"')
    assert b"\\u0000" in body
    r = _deliver(client, body)
    assert r.status_code == 202, r.get_data(as_text=True)
    with transaction() as session:
        assert session.scalars(select(Delivery.issue_key)).all() == [f"{REPO}#1"]


def test_an_event_key_with_nul_is_400(client):
    # gunicorn refuses such a header; a development server (http.server) passes it on.
    r = client.post("/webhooks/bitbucket/acme", data=BODY, headers={
        "X-Event-Key": "repo:push\x00", "X-Hub-Signature": sign(SECRET, BODY)})
    assert r.status_code == 400 and "NUL" in r.get_json()["error"]
    assert _count(Delivery) == 0


# --- the helpdesk API -------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["title", "description", "reporter"])
@pytest.mark.parametrize("escape", [b"\\ud800", b"\\udfff", b"\\ude00\\ud83d"])
def test_creating_a_ticket_with_a_lone_surrogate_is_400_and_creates_nothing(client, field, escape):
    fields = {"title": b'"Title"', field: b'"bad ' + escape + b' text"'}
    raw = b"{" + b", ".join(b'"%s": %s' % (k.encode(), v) for k, v in fields.items()) + b"}"
    r = _post_json(client, "/api/tickets", raw)
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.get_json()["error"].startswith(f"{field} contains an unpaired UTF-16 surrogate")
    assert _count(Ticket) == 0


@pytest.mark.parametrize("raw", [b'{"body": "x \\ud800"}', b'{"body": "ok", "author": "\\udc00"}'])
def test_a_comment_with_a_lone_surrogate_is_400_and_adds_nothing(client, raw):
    ticket = client.post("/api/tickets", json={"title": "t"}).get_json()
    r = _post_json(client, f"/api/tickets/{ticket['id']}/comments", raw)
    assert r.status_code == 400 and "unpaired UTF-16 surrogate" in r.get_json()["error"]
    assert _count(TicketComment) == 0


def test_an_edit_with_a_lone_surrogate_is_400_and_changes_nothing(client):
    ticket = client.post("/api/tickets", json={"title": "before"}).get_json()
    r = _post_json(client, f"/api/tickets/{ticket['id']}", b'{"title": "\\ud800"}', "patch")
    assert r.status_code == 400
    assert client.get(f"/api/tickets/{ticket['id']}").get_json()["title"] == "before"


def test_raw_surrogate_bytes_are_refused_too(client):
    # UTF-8-encoded surrogates are not UTF-8; json reads bytes with surrogatepass.
    r = _post_json(client, "/api/tickets", b'{"title": "\xed\xa0\x80"}')
    assert r.status_code == 400 and _count(Ticket) == 0


def test_valid_pairs_and_right_to_left_marks_are_stored_exactly(client):
    raw = (b'{"title": "\\ud83d\\ude00 \\u202eevil\\u202c", '
           b'"description": "\\u200f\\u05e9\\u05dc\\u05d5\\u05dd \\u2067x\\u2069", "reporter": "\\u200fR"}')
    r = _post_json(client, "/api/tickets", raw)
    assert r.status_code == 201, r.get_data(as_text=True)
    stored = client.get(f"/api/tickets/{r.get_json()['id']}").get_json()
    assert (stored["title"], stored["description"], stored["reporter"]) == (
        "😀 \u202eevil\u202c", "\u200fשלום \u2067x\u2069", "\u200fR")


@pytest.mark.parametrize("header, stored", [
    ("Ana\x00Lima", "AnaLima"),                                     # a development server passes NUL
    ("Jos\u00e9".encode().decode("latin-1"), "Jos\u00e9"),        # UTF-8 bytes, as WSGI hands them over
    ("Caf\xe9", "Caf\xe9"),                                          # a latin-1 byte that is not UTF-8
    ("x" * 300, "x" * 254 + "\u2026"),
])
def test_the_x_actor_header_is_stored_whatever_its_bytes(client, header, stored):
    ticket = client.post("/api/tickets", json={"title": "t"}).get_json()
    with transaction() as session:
        conn = connections.get(session, "acme")
        session.add(Link(connection_id=conn.id, bitbucket_repo=REPO, bitbucket_issue_id=1,
                         target_id=str(ticket["id"])))
    r = client.patch(f"/api/tickets/{ticket['id']}", json={"title": "new"}, headers={"X-Actor": header})
    assert r.status_code == 200, r.get_data(as_text=True)
    with transaction() as session:
        assert session.scalars(select(OutboxEntry.actor)).all() == [stored]


def test_a_query_parameter_with_nul_is_400(client):
    r = client.get("/api/tickets?bitbucket_repo=a%00b")
    assert r.status_code == 400 and "NUL" in r.get_json()["error"]


@pytest.mark.parametrize("path", ["/api/tickets/9223372036854775808", "/api/tickets/2147483648",
                                  "/api/tickets/99999999999999999999999/comments"])
def test_ids_beyond_the_database_integer_are_not_found_rather_than_an_error(path, client):
    method = client.post if path.endswith("/comments") else client.get
    r = method(path, json={"body": "x"})
    assert r.status_code == 404
