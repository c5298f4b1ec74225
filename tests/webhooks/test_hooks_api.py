"""The admin's hooks API (webhooks/hooks_api.py) against the simulator, in process: register,
list, repair, rotate, remove; a connection without hooks, a bad URL, a Bitbucket that refuses;
and removing a connection whose hooks cannot be removed removes nothing."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from tests.worker.sync.conftest import REPO, harness  # noqa: F401 - the harness fixture
from worker.db.hooks import ConnectionHook
from worker.db.models import Connection, LedgerEntry, WebhookSecret
from worker.db.session import transaction

PUBLIC = "https://bbsync.example"
HOOKS = "/api/connections/acme/hooks"


@pytest.fixture
def h(harness):  # noqa: F811 - the fixture imported above
    harness.web.application.extensions["bbsync_bitbucket"] = harness.client_factory
    return harness


def ours(h) -> list[dict]:
    return [x for x in h.api("GET", "/hooks")["values"] if x["description"] == "bbsync acme"]


def stored() -> tuple:
    with transaction() as session:
        return (session.scalar(select(Connection.hooks_public_url)),
                session.scalar(select(func.count()).select_from(WebhookSecret)),
                session.scalar(select(func.count()).select_from(ConnectionHook)))


def generated_secrets() -> list[str]:
    from worker import crypto
    with transaction() as session:
        return [crypto.decrypt(s.ciphertext) for s in session.scalars(
            select(WebhookSecret).where(WebhookSecret.origin == "hooks"))]


def assert_no_secret(h, response) -> None:
    text = response.get_data(as_text=True)
    assert all(s not in text for s in generated_secrets() + ["s3cret", "api-token"])


def test_register_list_drift_repair_rotate_remove(h):
    made = h.web.post(HOOKS, json={"public_url": PUBLIC})
    assert made.status_code == 200, made.json
    assert made.json["ok"] is True and made.json["repos"][0]["actions"] == ["created"]
    [hook] = ours(h)
    assert made.json["repos"][0]["hook"] == hook["uuid"] and hook["url"] == f"{PUBLIC}/webhooks/bitbucket/acme"
    listed = h.web.get(HOOKS)
    assert listed.json["ok"] is True and listed.json["repos"][0]["state"] == "ok"

    h.api("PUT", f"/hooks/{hook['uuid']}", json={"active": False})
    drifted = h.web.get(HOOKS)
    assert drifted.status_code == 200 and drifted.json["ok"] is False
    assert drifted.json["repos"][0]["state"] == "drifted: inactive" and drifted.json["repos"][0]["active"] is False
    repaired = h.web.post(f"{HOOKS}/repair")
    assert repaired.json["ok"] is True and repaired.json["repos"][0]["actions"] == ["repaired"]
    assert h.web.get(HOOKS).json["ok"] is True

    before = generated_secrets()
    rotated = h.web.post(f"{HOOKS}/rotate", json={"overlap_seconds": 60})
    assert rotated.status_code == 200 and rotated.json["repos"][0]["actions"] == ["new secret"]
    assert len(generated_secrets()) == 2 and before[0] in generated_secrets()
    for response in (made, listed, drifted, repaired, rotated):
        assert_no_secret(h, response)

    removed = h.web.delete(HOOKS)
    assert removed.status_code == 200
    assert removed.json["repos"][0]["actions"] == [f"removed hook {hook['uuid'].strip('{}')}"]
    assert ours(h) == [] and generated_secrets() == []
    assert h.web.get(HOOKS).status_code == 409


def test_a_connection_without_hooks_an_unknown_one_and_bad_input(h):
    before = stored()
    for method, path in (("GET", HOOKS), ("POST", f"{HOOKS}/repair"), ("POST", f"{HOOKS}/rotate")):
        r = h.web.open(path, method=method)
        assert r.status_code == 409 and "no registered hooks" in r.json["error"], r.json
        r = h.web.open(path.replace("acme", "nosuch"), method=method)
        assert (r.status_code, r.json) == (404, {"error": "no connection named 'nosuch'"})
    assert h.web.delete(HOOKS).json == {"ok": True, "repos": []}
    for body, message in (({"public_url": "http://bbsync.example"}, "plain http"),
                          ({"public_url": "https://10.0.0.8"}, "private"),
                          ({"public_url": 7}, "public_url must be a string"),
                          ({}, "public_url is required"),
                          ({"public_url": PUBLIC, "secret": "x"}, "unknown field(s): secret")):
        r = h.web.post(HOOKS, json=body)
        assert r.status_code == 400 and message in r.json["error"], r.json
    for overlap in (0, -1, 2592001, True, "3600", 1.5):
        r = h.web.post(f"{HOOKS}/rotate", json={"overlap_seconds": overlap})
        assert r.status_code == 400 and "overlap_seconds" in r.json["error"]
    assert stored() == before and ours(h) == []


def test_a_refusing_bitbucket_answers_502_with_each_repository(h):
    h.state.faults.add(status=403, times=1, path=r"/hooks")
    r = h.web.post(HOOKS, json={"public_url": PUBLIC})
    assert r.status_code == 502 and r.json["ok"] is False
    [repo] = r.json["repos"]
    assert repo["repo"] == REPO and "may not manage this repository's webhooks" in repo["error"]
    with transaction() as session:  # the failure is a ledger entry too
        assert session.scalar(select(func.count()).select_from(LedgerEntry).where(
            LedgerEntry.outcome == "failed", LedgerEntry.field == "hook")) == 1


def test_removing_a_connection_whose_hooks_cannot_be_removed_removes_nothing(h):
    assert h.web.post(HOOKS, json={"public_url": PUBLIC}).status_code == 200
    before = stored()
    h.state.faults.add(status=403, times=1, path=r"/hooks")
    r = h.web.delete("/api/connections/acme")
    assert r.status_code == 502 and "data was kept" in r.json["error"] and r.json["repos"][0]["error"]
    assert stored() == before and len(ours(h)) == 1
    gone = h.web.delete("/api/connections/acme")
    assert gone.status_code == 200 and gone.json["hooks_deleted"] == 1 and ours(h) == []
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Connection)) == 0
