"""Issues: create, read, partial update, delete, validation."""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import pytest

from .helpers import API, AUTH, PUBLIC_URL, Api, create_issue

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}\+00:00")


def test_create_needs_only_a_title_and_gets_bitbucket_defaults(api):
    response = api.post("issues", json={"title": "Printer on fire"})
    assert response.status_code == 201
    issue = response.json
    assert response.headers["Location"] == f"{PUBLIC_URL}{API}/issues/1"
    assert issue["links"]["self"]["href"] == response.headers["Location"]
    assert (issue["id"], issue["state"], issue["kind"], issue["priority"]) == (1, "new", "bug",
                                                                              "major")
    assert issue["content"] == {"raw": "", "markup": "markdown", "html": ""}
    assert issue["assignee"] is None and issue["edited_on"] is None
    assert (issue["component"], issue["milestone"], issue["version"]) == (None, None, None)
    assert (issue["votes"], issue["watches"]) == (0, 1)
    assert TIMESTAMP.fullmatch(issue["created_on"])
    assert issue["updated_on"] == issue["created_on"]
    assert issue["repository"]["full_name"] == "acme/widgets"


def test_create_sets_all_given_fields(api):
    issue = create_issue(api, content={"raw": "Smoke & <flames>"}, state="open", kind="task",
                         priority="critical", assignee={"username": "ann"},
                         component={"name": "printing"}, milestone={"name": "M1"},
                         version={"name": "1.0"})
    assert issue["content"]["raw"] == "Smoke & <flames>"
    assert issue["content"]["html"] == "<p>Smoke &amp; &lt;flames&gt;</p>"
    assert (issue["state"], issue["kind"], issue["priority"]) == ("open", "task", "critical")
    assert issue["assignee"]["nickname"] == "ann"
    assert issue["component"]["name"] == "printing" and issue["milestone"]["name"] == "M1"
    assert issue["version"]["name"] == "1.0"


def test_ids_are_sequential_per_repository_and_never_reused(api):
    assert [create_issue(api)["id"] for _ in range(3)] == [1, 2, 3]
    api.delete("issues/3")
    assert create_issue(api)["id"] == 4
    api.post("/2.0/repositories/acme/other", json={"scm": "git", "has_issues": True})
    other = api.post("/2.0/repositories/acme/other/issues", json={"title": "x"}).json
    assert other["id"] == 1


@pytest.mark.parametrize("body, field", [
    ({}, "title"),
    ({"title": ""}, "title"),
    ({"title": "x", "state": "done"}, "state"),
    ({"title": "x", "kind": "feature"}, "kind"),
    ({"title": "x", "priority": "urgent"}, "priority"),
    ({"title": "x", "assignee": "ann"}, "assignee"),
    ({"title": "x", "milestone": {"id": 3}}, "milestone"),
    ({"title": "x", "content": {"raw": "x", "markup": "html"}}, "content"),
])
def test_invalid_create_is_400_naming_the_field(api, body, field):
    response = api.post("issues", json=body)
    assert response.status_code == 400
    assert response.json["type"] == "error"
    assert field in response.json["error"]["fields"]


def test_non_json_body_is_400(api):
    response = api.post("issues", data="title=x", content_type="application/json")
    assert response.status_code == 400


def test_get_unknown_issue_is_404(api):
    assert api.get("issues/42").status_code == 404
    assert api.get("issues/abc").status_code == 404


def test_put_is_partial_and_null_clears(api):
    issue = create_issue(api, content={"raw": "body"}, assignee={"username": "ann"},
                         milestone={"name": "M1"})
    response = api.put("issues/1", json={"state": "open", "assignee": None, "milestone": None})
    assert response.status_code == 200
    updated = response.json
    assert updated["state"] == "open"
    assert updated["assignee"] is None and updated["milestone"] is None
    assert updated["title"] == issue["title"] and updated["content"]["raw"] == "body"
    assert datetime.fromisoformat(updated["updated_on"]) > datetime.fromisoformat(
        issue["updated_on"])
    assert api.get("issues/1").json == updated


def test_put_validates_enums_and_changes_nothing_on_error(api):
    create_issue(api)
    response = api.put("issues/1", json={"state": "open", "priority": "urgent"})
    assert response.status_code == 400 and "priority" in response.json["error"]["fields"]
    assert api.get("issues/1").json["state"] == "new"
    assert api.put("issues/1", json={"title": None}).status_code == 400


def test_put_that_changes_nothing_records_nothing(api, state):
    issue = create_issue(api, state="open")
    unchanged = api.put("issues/1", json={"state": "open", "title": issue["title"]}).json
    assert unchanged["updated_on"] == issue["updated_on"]
    assert api.get("issues/1/changes").json["size"] == 0
    assert [e.event_key for e in state.events] == ["issue:created"]


def test_assignee_can_be_referenced_by_uuid_account_id_or_username(api):
    ann = create_issue(api, assignee={"username": "ann"})["assignee"]
    by_uuid = api.put("issues/1", json={"assignee": {"uuid": ann["uuid"]}}).json["assignee"]
    by_account = api.put("issues/1", json={"assignee": {"account_id": ann["account_id"]}})
    assert by_uuid["uuid"] == ann["uuid"] == by_account.json["assignee"]["uuid"]


def test_a_known_user_added_in_python_is_assignable(api, state):
    carol = state.ensure_user("Carol Danvers", nickname="carol")
    issue = create_issue(api, assignee={"uuid": carol["uuid"]})
    assert issue["assignee"]["display_name"] == "Carol Danvers"


def test_delete_issue(api):
    create_issue(api)
    assert api.delete("issues/1").status_code == 204
    assert api.get("issues/1").status_code == 404
    assert api.delete("issues/1").status_code == 404


def test_concurrent_creates_and_edits_stay_consistent(api, app):
    """The store is shared by the threaded server's threads: ids and records stay whole."""
    def work(n: int) -> int:
        client = Api(app, AUTH)
        issue = client.post("issues", json={"title": f"t{n}"}).json
        client.put(f"issues/{issue['id']}", json={"state": "open"})
        client.post(f"issues/{issue['id']}/comments", json={"content": {"raw": "x"}})
        return issue["id"]

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = sorted(pool.map(work, range(40)))
    assert ids == list(range(1, 41))
    listed = api.get("issues", query_string={"pagelen": 100, "q": 'state = "open"'}).json
    assert listed["size"] == 40
    comment_ids = [c["id"] for i in ids for c in api.get(f"issues/{i}/comments").json["values"]]
    assert len(set(comment_ids)) == 80
