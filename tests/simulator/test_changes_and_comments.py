"""Change records and comments, over REST."""
from __future__ import annotations

from .helpers import create_issue


def test_put_creates_a_change_record_and_a_null_comment(api):
    create_issue(api)
    api.put("issues/1", json={"state": "resolved", "assignee": {"username": "ann"}})
    changes = api.get("issues/1/changes").json["values"]
    assert len(changes) == 1
    change = changes[0]
    assert change["type"] == "issue_change"
    # The REST change API names the state `state` (webhooks say `status`).
    assert change["changes"]["state"] == {"old": "new", "new": "resolved"}
    assert change["changes"]["assignee"] == {"old": "", "new": "ann"}
    assert change["changes"]["assignee_account_id"]["new"]
    assert "status" not in change["changes"]
    comments = api.get("issues/1/comments").json["values"]
    assert [c["content"]["raw"] for c in comments] == [None]
    assert comments[0]["content"]["html"] == ""


def test_post_change_applies_it_with_a_message(api):
    issue = create_issue(api)
    response = api.post("issues/1/changes", json={
        "changes": {"state": {"new": "resolved"}, "priority": {"new": "minor"},
                    "content": {"new": "new text"}, "title": {"new": "Renamed"}},
        "message": {"raw": "Fixed in 1.2"}})
    assert response.status_code == 201
    change = response.json
    assert response.headers["Location"] == change["links"]["self"]["href"]
    assert change["changes"]["state"] == {"old": "new", "new": "resolved"}
    assert change["changes"]["content"] == {"old": "", "new": "new text"}
    assert change["message"]["raw"] == "Fixed in 1.2"
    now = api.get("issues/1").json
    assert (now["state"], now["priority"], now["title"]) == ("resolved", "minor", "Renamed")
    assert now["content"]["raw"] == "new text"
    assert now["updated_on"] > issue["updated_on"]
    comments = api.get("issues/1/comments").json["values"]
    assert [c["content"]["raw"] for c in comments] == ["Fixed in 1.2"]


def test_post_change_assigns_by_account_id(api, state):
    ann = state.ensure_user("Ann", nickname="ann")
    create_issue(api)
    api.post("issues/1/changes",
             json={"changes": {"assignee_account_id": {"new": ann["account_id"]}}})
    assert api.get("issues/1").json["assignee"]["uuid"] == ann["uuid"]
    api.post("issues/1/changes", json={"changes": {"assignee_account_id": {"new": None}}})
    assert api.get("issues/1").json["assignee"] is None


def test_post_change_with_only_a_message_records_it(api):
    create_issue(api)
    response = api.post("issues/1/changes", json={"message": {"raw": "Just a note"}})
    assert response.status_code == 201
    assert response.json["changes"] == {}


def test_invalid_post_change_is_400(api):
    create_issue(api)
    for body in ({"changes": {"state": {"new": "finished"}}},
                 {"changes": {"colour": {"new": "red"}}},
                 {"changes": {"state": "resolved"}},
                 {"changes": {}},
                 {}):
        response = api.post("issues/1/changes", json=body)
        assert response.status_code == 400, body
        assert response.json["error"]["fields"]
    assert api.get("issues/1/changes").json["size"] == 0


def test_changes_are_listed_oldest_first_and_fetched_singly(api):
    create_issue(api)
    for state in ("open", "on hold", "resolved"):
        api.put("issues/1", json={"state": state})
    values = api.get("issues/1/changes").json["values"]
    assert [v["changes"]["state"]["new"] for v in values] == ["open", "on hold", "resolved"]
    one = api.get(f"issues/1/changes/{values[1]['id']}")
    assert one.status_code == 200 and one.json == values[1]
    assert api.get("issues/1/changes/1").status_code == 404


def test_changes_can_be_filtered_like_bitbucket_documents(api):
    create_issue(api)
    for state in ("open", "resolved", "open"):
        api.put("issues/1", json={"state": state})
    found = api.get("issues/1/changes", query_string={"q": 'changes.state.new = "resolved"'})
    assert found.json["size"] == 1


def test_comment_create_read_edit_delete(api):
    issue = create_issue(api)
    created = api.post("issues/1/comments", json={"content": {"raw": "On it."}})
    assert created.status_code == 201
    comment = created.json
    assert created.headers["Location"] == comment["links"]["self"]["href"]
    assert comment["type"] == "issue_comment" and comment["id"] > 100_000_000
    assert comment["content"] == {"raw": "On it.", "markup": "markdown", "html": "<p>On it.</p>"}
    assert comment["updated_on"] is None
    assert comment["issue"]["id"] == 1
    assert api.get("issues/1").json["updated_on"] > issue["updated_on"]

    path = f"issues/1/comments/{comment['id']}"
    assert api.get(path).json == comment
    edited = api.put(path, json={"content": {"raw": "Done."}})
    assert edited.status_code == 200
    assert edited.json["content"]["raw"] == "Done." and edited.json["updated_on"]
    assert api.delete(path).status_code == 204
    assert api.get(path).status_code == 404
    assert api.get("issues/1/comments").json["size"] == 0


def test_comment_ids_increase_across_issues(api):
    create_issue(api)
    create_issue(api)
    first = api.post("issues/1/comments", json={"content": {"raw": "a"}}).json["id"]
    second = api.post("issues/2/comments", json={"content": {"raw": "b"}}).json["id"]
    assert second > first


def test_comment_needs_content(api):
    create_issue(api)
    for body in ({}, {"content": {}}, {"content": {"raw": ""}}, {"content": "text"}):
        assert api.post("issues/1/comments", json=body).status_code == 400
    assert api.post("issues/9/comments", json={"content": {"raw": "x"}}).status_code == 404
