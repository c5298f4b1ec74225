"""BitbucketClient against the simulator: every method's happy path, pagination, typed errors."""
from __future__ import annotations

import httpx2
import pytest

from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.errors import (AuthFailed, BadRequest, BitbucketError, Conflict, NotFound,
                                     TrackerRemoved)

from .helpers import API_URL, ISSUES_PATH, REPO, api_calls


def new_issue(client, title="Printer on fire", **fields) -> dict:
    return client.create_issue(REPO, {"title": title, **fields})


# --- issues -----------------------------------------------------------------------------------

def test_create_issue_returns_the_created_issue(client, sim):
    issue = new_issue(client, kind="bug", priority="critical", content={"raw": "smoke"})
    assert issue["id"] == 1 and issue["title"] == "Printer on fire"
    assert issue["kind"] == "bug" and issue["priority"] == "critical"
    assert sim.request_log[-1] == ("POST", ISSUES_PATH, 201)


def test_get_issue_returns_the_issue(client):
    created = new_issue(client)
    assert client.get_issue(REPO, created["id"]) == created


def test_update_issue_is_a_partial_put(client):
    issue = new_issue(client, priority="minor")
    updated = client.update_issue(REPO, issue["id"], {"state": "open"})
    assert updated["state"] == "open" and updated["priority"] == "minor"


def test_post_change_applies_a_batch_of_fields_in_one_call(client, sim):
    issue = new_issue(client)
    before = len(sim.request_log)
    change = client.post_change(REPO, issue["id"], {"state": "resolved", "priority": "blocker"},
                                message="Fixed in the helpdesk")
    assert len(sim.request_log) == before + 1
    assert sim.request_log[-1] == ("POST", f"{ISSUES_PATH}/1/changes", 201)
    assert change["changes"]["state"]["new"] == "resolved"
    assert change["changes"]["priority"]["new"] == "blocker"
    assert change["message"]["raw"] == "Fixed in the helpdesk"
    now = client.get_issue(REPO, issue["id"])
    assert (now["state"], now["priority"]) == ("resolved", "blocker")
    assert [c["changes"]["state"]["new"] for c in client.iter_changes(REPO, 1)] == ["resolved"]


def test_post_change_accepts_values_already_wrapped_in_new(client):
    issue = new_issue(client)
    client.post_change(REPO, issue["id"], {"state": {"new": "on hold"}})
    assert client.get_issue(REPO, issue["id"])["state"] == "on hold"


@pytest.mark.parametrize("changes, message", [({}, None), ({"state": {"old": "new"}}, None)])
def test_post_change_rejects_an_empty_or_malformed_batch_before_any_call(client, sim, changes,
                                                                         message):
    with pytest.raises(ValueError):
        client.post_change(REPO, 1, changes, message)
    assert sim.request_log == []


# --- comments, attachments ------------------------------------------------------------------

def test_comments_are_created_and_listed_across_pages(client, sim):
    issue = new_issue(client)
    created = [client.create_comment(REPO, issue["id"], f"comment {n}") for n in range(5)]
    assert created[0]["content"]["raw"] == "comment 0"
    listed = list(client.iter_comments(REPO, issue["id"], pagelen=2))
    assert [c["id"] for c in listed] == [c["id"] for c in created]
    assert len(api_calls(sim, "GET", "/comments")) == 3


def test_attachments_are_uploaded_as_multipart_and_listed(client, sim):
    issue = new_issue(client)
    result = client.upload_attachments(REPO, issue["id"], [
        ("log.txt", b"line 1\n", "text/plain"), ("shot.png", b"\x89PNG\r\n", "image/png")])
    assert result is None
    assert sim.request_log[-1] == ("POST", f"{ISSUES_PATH}/1/attachments", 201)
    names = [a["name"] for a in client.iter_attachments(REPO, issue["id"])]
    assert names == ["log.txt", "shot.png"]
    assert sim.read_attachment("acme", "widgets", 1, "shot.png") == (b"\x89PNG\r\n", "image/png")


def test_upload_needs_a_file(client):
    with pytest.raises(ValueError):
        client.upload_attachments(REPO, 1, [])


# --- repositories, hooks ----------------------------------------------------------------------

def test_create_repository_with_an_issue_tracker(client):
    repo = client.create_repository("acme/gears", description="Gears")
    assert repo["full_name"] == "acme/gears" and repo["has_issues"] is True
    assert client.get_repository("acme/gears")["description"] == "Gears"
    assert client.create_issue("acme/gears", {"title": "first"})["id"] == 1


def test_create_hook_sends_the_secret_which_is_never_returned(client, sim):
    hook = client.create_hook(REPO, "https://hooks.example.com/bb", "s3cret-value",
                              ["issue:created", "issue:updated"])
    assert hook["secret_set"] is True and "secret" not in hook
    assert hook["events"] == ["issue:created", "issue:updated"]
    assert [h["uuid"] for h in client.iter_hooks(REPO)] == [hook["uuid"]]
    assert sim._repos[REPO].hooks[hook["uuid"].strip("{}")].secret == "s3cret-value"


# --- pagination ---------------------------------------------------------------------------------

def test_iter_issues_pages_through_next_with_q_and_sort(client, sim):
    for n in range(7):
        new_issue(client, title=f"issue {n}", priority="major" if n % 2 else "minor")
    before = len(sim.request_log)
    found = client.iter_issues(REPO, q='priority = "major"', sort="-id", pagelen=2)
    first = next(found)
    assert first["id"] == 6
    assert len(sim.request_log) == before + 1              # streams: one page fetched so far
    rest = list(found)
    assert [i["id"] for i in [first, *rest]] == [6, 4, 2]
    pages = sim.request_log[before:]
    assert [p.status for p in pages] == [200, 200]


def test_iter_issues_default_pagelen_is_100():
    seen: list[httpx2.Request] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        return httpx2.Response(200, json={"values": [{"id": 1}], "pagelen": 100})

    with BitbucketClient(API_URL, httpx2.Auth(), transport=httpx2.MockTransport(handler)) as c:
        assert list(c.iter_issues(REPO, q='state = "new"')) == [{"id": 1}]
    assert seen[0].url.params["pagelen"] == "100"
    assert seen[0].url.params["q"] == 'state = "new"'


def test_a_next_link_to_another_host_is_not_followed():
    hosts: list[str] = []

    def handler(request: httpx2.Request) -> httpx2.Response:
        hosts.append(request.url.host)
        return httpx2.Response(200, json={"values": [{"id": 1}],
                                          "next": "https://evil.example/steal?page=2"})

    with BitbucketClient(API_URL, httpx2.Auth(), transport=httpx2.MockTransport(handler)) as c:
        issues = c.iter_issues(REPO)
        assert next(issues) == {"id": 1}
        with pytest.raises(BitbucketError, match="origin"):
            next(issues)
    assert hosts == ["bbsim.test"]


# --- typed errors ----------------------------------------------------------------------------

def test_missing_issue_is_not_found(client, sim):
    with pytest.raises(NotFound) as caught:
        client.get_issue(REPO, 404)
    assert caught.value.status == 404 and caught.value.message == "Issue not found."
    assert caught.value.path == f"{ISSUES_PATH}/404"
    assert len(sim.request_log) == 1                      # not retried


def test_bad_request_carries_the_error_envelope_fields(client, sim):
    with pytest.raises(BadRequest) as caught:
        client.create_issue(REPO, {"kind": "feature"})
    err = caught.value
    assert err.status == 400
    assert set(err.fields) == {"title", "kind"}
    assert "required key not provided" in err.fields["title"][0]
    assert "title" in str(err) and "POST" in str(err)
    assert len(sim.request_log) == 1


def test_unauthenticated_call_is_auth_failed(sim, make_client):
    anonymous = make_client(auth=httpx2.Auth())
    with pytest.raises(AuthFailed) as caught:
        anonymous.get_issue(REPO, 1)
    assert caught.value.status == 401 and "Authentication required" in caught.value.message
    assert len(sim.request_log) == 1


def test_forbidden_is_auth_failed(client, sim):
    sim.faults.add(status=403)
    with pytest.raises(AuthFailed) as caught:
        client.get_issue(REPO, 1)
    assert caught.value.status == 403


def test_removed_tracker_raises_tracker_removed_and_is_never_retried(client, sim):
    new_issue(client)
    sim.remove_tracker(REPO)
    before = len(sim.request_log)
    for call in (lambda: client.get_issue(REPO, 1),
                 lambda: list(client.iter_issues(REPO)),
                 lambda: client.post_change(REPO, 1, {"state": "open"}, retry_unsafe=True),
                 lambda: client.create_comment(REPO, 1, "hi", retry_unsafe=True)):
        with pytest.raises(TrackerRemoved) as caught:
            call()
        assert caught.value.status == 410
        assert "2026-08-20" in (caught.value.detail or "")
    assert [r.status for r in sim.request_log[before:]] == [410, 410, 410, 410]


def test_conflict_is_typed():
    transport = httpx2.MockTransport(lambda request: httpx2.Response(
        409, json={"type": "error", "error": {"message": "Version conflict"}}))
    with BitbucketClient(API_URL, httpx2.Auth(), transport=transport) as c:
        with pytest.raises(Conflict, match="Version conflict"):
            c.update_issue(REPO, 1, {"title": "x"})


def test_a_success_without_json_is_an_error_not_a_crash():
    transport = httpx2.MockTransport(lambda request: httpx2.Response(200, text="<html>"))
    with BitbucketClient(API_URL, httpx2.Auth(), transport=transport) as c:
        with pytest.raises(BitbucketError, match="not JSON"):
            c.get_issue(REPO, 1)


@pytest.mark.parametrize("repo", ["acme", "acme/", "/widgets", "acme/wid/gets", "acme/..",
                                  "acme/wid gets", "acme/wid?x=1", "acme/#"])
def test_bad_repository_names_are_refused_before_any_request(client, sim, repo):
    with pytest.raises(ValueError):
        client.get_issue(repo, 1)
    assert sim.request_log == []


@pytest.mark.parametrize("issue_id", [0, -1, True, "1", 1.0])
def test_bad_issue_ids_are_refused_before_any_request(client, sim, issue_id):
    with pytest.raises(ValueError):
        client.get_issue(REPO, issue_id)
    assert sim.request_log == []


def test_client_is_a_context_manager_and_closes(transport):
    from worker.bitbucket.auth import BearerAuth
    from worker.bitbucket.credentials import BearerToken
    with BitbucketClient(API_URL, BearerAuth(BearerToken("tok")), transport=transport) as c:
        pass
    with pytest.raises(RuntimeError):
        c.get_issue(REPO, 1)
