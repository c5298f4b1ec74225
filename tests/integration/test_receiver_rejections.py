"""Bad, hostile and oversized input to the webhook receiver: a clear error, and nothing written."""
from __future__ import annotations

import json

import httpx2
import pytest

from tests.conftest import load_fixture
from webhooks.signatures import sign

pytestmark = pytest.mark.integration

BODY = load_fixture("kanboard__bitbucket_issue_opened")


@pytest.fixture
def conn(running):
    return running.add_connection(["minicoders/test-webhook"])


def _rows(running) -> tuple[int, int, int]:
    return (running.scalar("select count(*) from deliveries"), running.scalar("select count(*) from ledger"),
            running.scalar("select count(*) from tickets"))


@pytest.fixture
def nothing_written(running):
    before = _rows(running)
    yield
    assert _rows(running) == before, "a rejected request wrote something"


def _error(r: httpx2.Response, status: int) -> str:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    return r.json()["error"]


def test_missing_signature_is_401(running, conn, nothing_written):
    name, _secret = conn
    assert "X-Hub-Signature" in _error(running.deliver(name, "issue:created", BODY, None), 401)


def test_wrong_secret_is_401(running, conn, nothing_written):
    name, _secret = conn
    _error(running.deliver(name, "issue:created", BODY, "not-the-secret"), 401)


def test_signature_over_a_different_body_is_401(running, conn, nothing_written):
    name, secret = conn
    other = load_fixture("kanboard__bitbucket_issue_closed")
    r = running.deliver(name, "issue:created", BODY, None, X_Hub_Signature=sign(secret, other))
    _error(r, 401)


def test_reserialised_body_with_the_same_content_is_401(running, conn, nothing_written):
    # The signature covers the raw bytes, not the JSON value: a proxy that re-serialises breaks it.
    name, secret = conn
    reserialised = json.dumps(json.loads(BODY), separators=(",", ":")).encode()
    assert json.loads(reserialised) == json.loads(BODY) and reserialised != BODY
    r = running.deliver(name, "issue:created", reserialised, None, X_Hub_Signature=sign(secret, BODY))
    _error(r, 401)


@pytest.mark.parametrize("header", ["sha1=abc", "sha256=", "sha256=" + "0" * 64, "garbage",
                                    "SHA256=" + "a" * 64, "sha256=" + "zz" * 32])
def test_malformed_signature_headers_are_401(running, conn, nothing_written, header):
    name, _secret = conn
    _error(running.deliver(name, "issue:created", BODY, None, X_Hub_Signature=header), 401)


def test_unknown_connection_is_404(running, nothing_written):
    _error(running.deliver("no-such-connection", "issue:created", BODY, "x"), 404)


def test_wrong_connection_is_401_even_with_a_valid_signature_for_another(running, conn, nothing_written):
    _name, secret = conn
    other, _other_secret = running.add_connection(["minicoders/test-webhook"])
    before = _rows(running)
    _error(running.deliver(other, "issue:created", BODY, secret), 401)
    assert _rows(running) == before


def test_body_over_the_limit_is_413(running, conn, nothing_written):
    name, secret = conn
    big = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'
    _error(running.deliver(name, "issue:created", big, secret), 413)


def test_chunked_body_over_the_limit_is_413(running, conn, nothing_written):
    name, secret = conn
    big = b'{"pad": "' + b"x" * (1024 * 1024) + b'"}'

    def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]
    r = httpx2.post(f"{running.web_url}/webhooks/bitbucket/{name}", content=chunks(), timeout=15,
                    headers={"X-Event-Key": "issue:created", "X-Hub-Signature": sign(secret, big)})
    _error(r, 413)


def test_malformed_json_is_400(running, conn, nothing_written):
    name, secret = conn
    body = b'{"issue": {"id": 1,'
    assert "JSON" in _error(running.deliver(name, "issue:created", body, secret), 400)


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"null", b"\xff\xfe\x00garbage", b"[" * 100000 + b"]" * 100000])
def test_non_object_or_hostile_json_is_400(running, conn, nothing_written, body):
    name, secret = conn
    _error(running.deliver(name, "issue:created", body, secret), 400)


def test_issue_event_without_an_issue_is_400(running, conn, nothing_written):
    name, secret = conn
    body = json.dumps({"repository": {"full_name": "minicoders/test-webhook"}}).encode()
    assert "issue" in _error(running.deliver(name, "issue:created", body, secret), 400)


def test_missing_event_key_is_400(running, conn, nothing_written):
    name, secret = conn
    r = httpx2.post(f"{running.web_url}/webhooks/bitbucket/{name}", content=BODY, timeout=15,
                    headers={"X-Hub-Signature": sign(secret, BODY), "Content-Type": "application/json"})
    assert "X-Event-Key" in _error(r, 400)


def test_get_is_405_and_writes_nothing(running, conn, nothing_written):
    name, _secret = conn
    r = httpx2.get(f"{running.web_url}/webhooks/bitbucket/{name}", timeout=15)
    _error(r, 405)


def test_hostile_connection_names_are_404(running, nothing_written):
    for name in ("..%2F..%2Fetc", "a" * 300, "%00", "x'; drop table deliveries;--"):
        r = httpx2.post(f"{running.web_url}/webhooks/bitbucket/{name}", content=BODY, timeout=15,
                        headers={"X-Event-Key": "issue:created", "X-Hub-Signature": sign("x", BODY)})
        assert r.status_code == 404, (name, r.status_code)


def test_api_rejects_bad_query_parameters(running):
    assert running.get("/api/tickets", bitbucket_issue="abc", bitbucket_repo="a/b").status_code == 400
    assert running.get("/api/tickets", bitbucket_issue="1").status_code == 400
    assert running.get("/api/tickets", limit="-5").status_code == 400
    assert running.get("/api/tickets/999999999").status_code == 404
    assert running.get("/api/ledger").status_code == 400
    assert running.get("/api/ledger", connection="nope").status_code == 404
