"""Issue attachments and webhook subscriptions."""
from __future__ import annotations

import io

import pytest

from .helpers import API, PUBLIC_URL, RECEIVER_URL, create_issue


def _upload(api, issue_id: int, *files: tuple[str, bytes]):
    data = {f"file{n}": (io.BytesIO(content), name) for n, (name, content) in enumerate(files)}
    return api.post(f"issues/{issue_id}/attachments", data=data,
                    content_type="multipart/form-data")


def test_upload_answers_201_with_empty_body_and_location(api):
    create_issue(api)
    response = _upload(api, 1, ("a.txt", b"alpha"), ("b.log", b"beta"))
    assert response.status_code == 201
    assert response.data == b""
    assert response.headers["Location"] == f"{PUBLIC_URL}{API}/issues/1/attachments"
    listed = api.get("issues/1/attachments").json
    assert [v["name"] for v in listed["values"]] == ["a.txt", "b.log"]
    assert listed["values"][0]["type"] == "issue_attachment"


def test_same_name_replaces(api):
    create_issue(api)
    _upload(api, 1, ("a.txt", b"old"))
    _upload(api, 1, ("a.txt", b"new"))
    assert api.get("issues/1/attachments").json["size"] == 1
    redirect = api.get("issues/1/attachments/a.txt")
    assert api.client.get(redirect.headers["Location"]).data == b"new"


def test_download_redirects_to_a_one_time_url(api):
    create_issue(api)
    _upload(api, 1, ("report final.txt", b"contents"))
    response = api.get("issues/1/attachments/report final.txt")
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(f"{PUBLIC_URL}/_sim/download/")
    fetched = api.client.get(location)            # no credentials needed
    assert fetched.status_code == 200 and fetched.data == b"contents"
    assert api.client.get(location).status_code == 404  # one time only


def test_upload_errors(api):
    create_issue(api)
    assert api.post("issues/1/attachments", json={"a": 1}).status_code == 400
    assert api.post("issues/1/attachments", data={"note": "no file"},
                    content_type="multipart/form-data").status_code == 400
    assert _upload(api, 7, ("a.txt", b"x")).status_code == 404
    assert api.get("issues/1/attachments/missing.txt").status_code == 404


def test_delete_attachment(api):
    create_issue(api)
    _upload(api, 1, ("a.txt", b"x"))
    assert api.delete("issues/1/attachments/a.txt").status_code == 204
    assert api.delete("issues/1/attachments/a.txt").status_code == 404
    assert api.get("issues/1/attachments").json["size"] == 0


HOOK = {"url": RECEIVER_URL, "description": "sync", "active": True,
        "events": ["issue:created", "issue:updated"]}


def test_hook_create_returns_it_without_the_secret(api):
    response = api.post("hooks", json={**HOOK, "secret": "s3cret"})
    assert response.status_code == 201
    hook = response.json
    assert response.headers["Location"] == hook["links"]["self"]["href"]
    assert hook["uuid"].startswith("{") and hook["uuid"].endswith("}")
    assert hook["secret_set"] is True and "secret" not in hook
    assert hook["subject_type"] == "repository"
    assert hook["subject"]["full_name"] == "acme/widgets"
    assert hook["events"] == HOOK["events"] and hook["created_at"]


def test_hook_path_uid_with_or_without_braces(api):
    uid = api.post("hooks", json=HOOK).json["uuid"]
    bare = uid.strip("{}")
    assert api.get(f"hooks/{uid}").json["uuid"] == uid
    assert api.get(f"hooks/{bare}").json["uuid"] == uid
    assert api.get(f"hooks/%7B{bare}%7D").status_code == 200


def test_hook_list_update_delete(api):
    uid = api.post("hooks", json=HOOK).json["uuid"]
    assert [h["uuid"] for h in api.get("hooks").json["values"]] == [uid]
    updated = api.put(f"hooks/{uid}", json={"active": False, "events": ["issue:updated"],
                                            "secret": "new"}).json
    assert updated["active"] is False and updated["events"] == ["issue:updated"]
    assert updated["secret_set"] is True and updated["url"] == RECEIVER_URL
    kept = api.put(f"hooks/{uid}", json={"description": "renamed"}).json
    assert kept["secret_set"] is True                  # an omitted secret is kept
    cleared = api.put(f"hooks/{uid}", json={"secret": None}).json
    assert cleared["secret_set"] is False              # null removes it
    assert api.delete(f"hooks/{uid}").status_code == 204
    assert api.get(f"hooks/{uid}").status_code == 404
    assert api.delete(f"hooks/{uid}").status_code == 404


@pytest.mark.parametrize("body, field", [
    ({**HOOK, "events": []}, "events"),
    ({k: v for k, v in HOOK.items() if k != "events"}, "events"),
    ({**HOOK, "events": ["issue:exploded"]}, "events"),
    ({**HOOK, "url": "not a url"}, "url"),
    ({**HOOK, "url": None}, "url"),
    ({**HOOK, "secret": "x" * 129}, "secret"),
    ({**HOOK, "active": "yes"}, "active"),
])
def test_invalid_hook_is_400(api, body, field):
    response = api.post("hooks", json=body)
    assert response.status_code == 400
    assert field in response.json["error"]["fields"]


def test_a_128_character_secret_is_fine_and_empty_means_none(api):
    assert api.post("hooks", json={**HOOK, "secret": "x" * 128}).json["secret_set"] is True
    assert api.post("hooks", json={**HOOK, "secret": ""}).json["secret_set"] is False


def test_hooks_of_unknown_repository_are_404(api):
    assert api.get("/2.0/repositories/acme/none/hooks").status_code == 404
    assert api.get("hooks/{00000000-0000-0000-0000-000000000000}").status_code == 404
