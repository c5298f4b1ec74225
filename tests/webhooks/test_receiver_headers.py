"""What the receiver takes from Bitbucket's headers and body, in-process (Flask's test client on
SQLite): the delivery's ids and attempt number, and the JSON it refuses."""
from __future__ import annotations

import hashlib
import io
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


class _Input(io.BytesIO):
    """A WSGI input that records how much was asked of it: a read past the body would block on
    a real socket until the client gave up."""

    def __init__(self, data: bytes):
        super().__init__(data)
        self.asked: list[int] = []

    def read(self, size: int = -1) -> bytes:
        self.asked.append(size)
        return super().read(size)


@pytest.mark.parametrize("environ, data, expected, asked", [
    # A server that ends the input itself (gunicorn): read up to one byte past the limit.
    ({"CONTENT_LENGTH": "5", "wsgi.input_terminated": True}, b"hello", b"hello", [11]),
    ({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}, b"x" * 10, b"x" * 10, [11]),
    ({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}, b"x" * 11, None, [11]),
    # Otherwise Content-Length bounds the read, even when more bytes follow on the connection.
    ({"CONTENT_LENGTH": "3"}, b"hello", b"hel", [3]),
    ({"CONTENT_LENGTH": " 4 "}, b"hello", b"hell", [4]),
    # Over the limit by its own declaration: nothing is read.
    ({"CONTENT_LENGTH": "11", "wsgi.input_terminated": True}, b"x" * 11, None, []),
    ({"CONTENT_LENGTH": "99999999999999999999"}, b"x", None, []),
    # No length and an input the server does not end, or a length that is not one: no body.
    ({}, b"hello", b"", []),
    ({"HTTP_TRANSFER_ENCODING": "chunked"}, b"hello", b"", []),
    ({"CONTENT_LENGTH": "-5"}, b"hello", b"", [0]),
    ({"CONTENT_LENGTH": "1_0"}, b"hello", b"", [0]),
    ({"CONTENT_LENGTH": "\u0665"}, b"hello", b"", [0]),  # a digit, but not an ASCII one
])
def test_the_body_is_read_as_werkzeug_reads_it_and_never_past_its_end(environ, data, expected, asked):
    from webhooks.receiver import _read_body
    stream = _Input(data)
    assert _read_body({**environ, "wsgi.input": stream}, limit=10) == expected
    assert stream.asked == asked


def test_a_declared_length_over_the_limit_is_413_and_stores_nothing(client):
    r = client.post("/webhooks/bitbucket/acme", data=BODY, headers={
        "X-Event-Key": "issue:created", "X-Hub-Signature": sign(SECRET, BODY)},
        environ_overrides={"CONTENT_LENGTH": str(2 * 1024 * 1024)})
    assert r.status_code == 413 and "limit" in r.get_json()["error"]
    assert _stored() == []
