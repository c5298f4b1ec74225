"""What the receiver takes from Bitbucket's headers and body, in-process (Flask's test client on
SQLite): the delivery's ids and attempt number, and the JSON it refuses."""
from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import text

from tests.conftest import load_fixture
from webhooks import create_app
from webhooks.signatures import sign
from worker import connections
from worker.db.session import get_engine, transaction

SECRET = "s3cret"
BODY = load_fixture("kanboard__bitbucket_issue_opened")


@pytest.fixture
def client(db):
    with transaction() as session:
        connections.upsert(session, connections.ConnectionSpec(
            name="acme", repos=("minicoders/test-webhook",), webhook_secrets=(SECRET,)))
    app = create_app(enqueue=lambda task, arg: True)
    return app.test_client()


def _post(client, body: bytes = BODY, **headers):
    return client.post("/webhooks/bitbucket/acme", data=body, headers={
        "X-Event-Key": "issue:created", "X-Hub-Signature": sign(SECRET, body),
        "Content-Type": "application/json", **headers})


def _stored() -> list[dict]:
    with get_engine().connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(
            "select request_uuid, hook_uuid, attempt from deliveries order by received_at"))]


def test_bitbucket_ids_are_stored_as_plain_lowercase_uuids(client):
    r = _post(client, **{"X-Request-UUID": "{7B1D5A3C-0000-4000-8000-00000000ABCD}",
                         "X-Hook-UUID": "{9f1e0000-1111-4222-8333-444455556666}",
                         "X-Attempt-Number": "2"})
    assert r.status_code == 202
    assert _stored() == [{"request_uuid": "7b1d5a3c-0000-4000-8000-00000000abcd",
                          "hook_uuid": "9f1e0000-1111-4222-8333-444455556666", "attempt": 2}]


@pytest.mark.parametrize("request_uuid", [
    "not-a-uuid!", "{}", "x" * 10, "a" * 65, "abc{def}", "'; drop table deliveries; --"])
def test_a_request_id_that_is_not_a_uuid_falls_back_to_the_body_hash(client, request_uuid):
    assert _post(client, **{"X-Request-UUID": request_uuid, "X-Hook-UUID": request_uuid}).status_code == 202
    assert _stored() == [{"request_uuid": "sha256:" + hashlib.sha256(BODY).hexdigest()[:56],
                          "hook_uuid": None, "attempt": 1}]


@pytest.mark.parametrize("attempt, stored", [("3", 3), ("0", 1), ("-4", 1), ("9999", 100), ("two", 1), ("", 1)])
def test_the_attempt_number_is_kept_within_1_to_100(client, attempt, stored):
    assert _post(client, **{"X-Attempt-Number": attempt}).status_code == 202
    assert [row["attempt"] for row in _stored()] == [stored]


def _with_title(title_json: bytes) -> bytes:
    payload = json.loads(BODY)
    payload["issue"]["title"] = "PLACEHOLDER"
    return json.dumps(payload).encode().replace(b'"PLACEHOLDER"', title_json)


@pytest.mark.parametrize("body", [
    _with_title(b'"crash \\ud800 here"'),  # a lone surrogate: PostgreSQL could not store it
    _with_title(b"NaN"),
    b"\xef\xbb\xbf" + BODY,  # a byte-order mark
    b"[" * 1100 + b"]" * 1100,
], ids=["lone-surrogate", "nan", "bom", "deep-nesting"])
def test_json_the_worker_could_not_apply_is_refused_at_the_door(client, body):
    r = _post(client, body)
    assert r.status_code == 400
    assert r.get_json() == {"error": "body is not valid JSON"}
    assert _stored() == []
