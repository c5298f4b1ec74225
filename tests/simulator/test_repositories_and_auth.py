"""Authentication, the principal, and repositories."""
from __future__ import annotations

import pytest

from .helpers import API, AUTH, Api, basic, create_issue


@pytest.mark.parametrize("header", [None, "", "Basic ", "Bearer ", "Basic " + "Og==",
                                    "Token abc", "Basic not-base64!"])
def test_requests_without_usable_credentials_get_401_envelope(app, header):
    headers = {} if header is None else {"Authorization": header}
    response = app.test_client().get(f"{API}/issues", headers=headers)
    assert response.status_code == 401
    assert response.json["type"] == "error"
    assert response.json["error"]["message"]


def test_basic_principal_is_a_stable_user_named_by_the_email(app):
    client = Api(app, basic("ann@example.com", "tok-1"))
    me = client.get("/2.0/user").json
    again = Api(app, basic("ann@example.com", "another-token")).get("/2.0/user").json
    assert me["display_name"] == "ann@example.com"
    assert me["nickname"] == "ann"
    assert me["uuid"].startswith("{") and me["uuid"].endswith("}")
    assert me["account_id"] and me["links"]["self"]["href"]
    assert again["uuid"] == me["uuid"]
    assert Api(app, basic("bob@example.com", "t")).get("/2.0/user").json["uuid"] != me["uuid"]


def test_foreign_bearer_token_is_accepted_as_its_own_user(app):
    client = Api(app, {"Authorization": "Bearer some-api-token"})
    me = client.get("/2.0/user").json
    assert me["type"] == "user"
    assert client.get(f"/2.0/users/{me['uuid']}").json["uuid"] == me["uuid"]


def test_the_reporter_is_the_principal(api):
    issue = create_issue(api)
    assert issue["reporter"]["uuid"] == api.get("/2.0/user").json["uuid"]


def test_unknown_user_is_404(api):
    assert api.get("/2.0/users/{00000000-0000-0000-0000-000000000000}").status_code == 404


def test_repository_create_answers_200_and_get_returns_it(app):
    client = Api(app, AUTH)
    created = client.post("/2.0/repositories/ws/repo", json={"scm": "git", "has_issues": True})
    assert created.status_code == 200
    body = created.json
    assert body["full_name"] == "ws/repo" and body["has_issues"] is True
    assert body["type"] == "repository" and body["uuid"].startswith("{")
    assert client.get("/2.0/repositories/ws/repo").json == body


def test_creating_an_existing_repository_is_400(api):
    response = api.post(API, json={"scm": "git"})
    assert response.status_code == 400
    assert response.json["error"]["message"]


def test_repository_with_another_scm_is_400(app):
    assert Api(app, AUTH).post("/2.0/repositories/ws/hg", json={"scm": "hg"}).status_code == 400


def test_unknown_repository_is_404_envelope(app):
    response = Api(app, AUTH).get("/2.0/repositories/ws/nope/issues")
    assert response.status_code == 404
    assert response.json["type"] == "error"


def test_repository_without_issue_tracker_has_no_issue_endpoints(app):
    client = Api(app, AUTH)
    client.post("/2.0/repositories/ws/plain", json={"scm": "git"})   # has_issues defaults false
    for method, path in [("get", "issues"), ("post", "issues"), ("get", "issues/1"),
                         ("get", "issues/1/comments")]:
        response = getattr(client, method)(f"/2.0/repositories/ws/plain/{path}",
                                           json={"title": "x"} if method == "post" else None)
        assert response.status_code == 404
        assert response.json["error"]["message"] == "Repository has no issue tracker."


def test_put_repository_enables_the_tracker_and_creates_missing_ones(app):
    client = Api(app, AUTH)
    client.post("/2.0/repositories/ws/plain", json={"scm": "git"})
    assert client.put("/2.0/repositories/ws/plain", json={"has_issues": True}).status_code == 200
    assert client.get("/2.0/repositories/ws/plain/issues").status_code == 200
    created = client.put("/2.0/repositories/ws/new", json={"scm": "git", "has_issues": True})
    assert created.status_code == 201 and created.headers["Location"]


def test_delete_repository(api):
    assert api.delete(API).status_code == 204
    assert api.get(API).status_code == 404


def test_unknown_api_route_and_wrong_method_are_envelopes(api):
    assert api.get("/2.0/nothing-here").json["type"] == "error"
    response = api.client.patch(f"{API}/issues", headers=AUTH)
    assert response.status_code == 405 and response.json["type"] == "error"


def test_every_api_call_is_logged(api, state):
    api.get("issues")
    api.get("issues", headers={"Authorization": ""})
    assert state.request_log[-2:] == [("GET", f"{API}/issues", 200),
                                      ("GET", f"{API}/issues", 401)]
    assert state.request_log[0] == ("POST", API, 200)
