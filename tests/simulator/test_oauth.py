"""The OAuth token endpoint: grants, expiry, refresh-token rotation."""
from __future__ import annotations

import base64

import pytest

from .helpers import API

TOKEN_URL = "/site/oauth2/access_token"


def _client_auth(client_id: str = "consumer-1", secret: str = "consumer-secret") -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


def _token(app, headers=None, **form):
    return app.test_client().post(TOKEN_URL, data=form, headers=_client_auth() if headers is None else headers)


def _bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def repo(app):
    response = app.test_client().post(API, json={"scm": "git", "has_issues": True},
                                      headers=_bearer("setup"))
    assert response.status_code == 200


def test_client_credentials_grant_issues_bitbucket_shaped_tokens(app, repo):
    response = _token(app, grant_type="client_credentials")
    assert response.status_code == 200
    body = response.json
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scopes"}
    assert body["token_type"] == "bearer" and body["expires_in"] == 3600
    me = app.test_client().get("/2.0/user", headers=_bearer(body["access_token"])).json
    assert me["display_name"] == "OAuth consumer consumer-1"
    assert app.test_client().get(f"{API}/issues",
                                 headers=_bearer(body["access_token"])).status_code == 200


def test_client_credentials_may_come_as_form_fields(app):
    response = _token(app, headers={}, grant_type="client_credentials", client_id="c",
                      client_secret="s")
    assert response.status_code == 200


def test_authorization_code_grant_needs_a_code_from_the_authorize_page(app):
    # (the authorize page and its codes: test_oauth_authorize.py)
    assert _token(app, grant_type="authorization_code", code="anything").json["error"] == "invalid_grant"
    assert _token(app, grant_type="authorization_code").json["error"] == "invalid_request"


def test_expired_access_token_is_401_until_refreshed(app, state, repo):
    state.token_ttl = 0
    tokens = _token(app, grant_type="client_credentials").json
    response = app.test_client().get(f"{API}/issues", headers=_bearer(tokens["access_token"]))
    assert response.status_code == 401
    assert "expired" in response.json["error"]["message"]
    state.token_ttl = 3600
    fresh = _token(app, grant_type="refresh_token", refresh_token=tokens["refresh_token"]).json
    assert app.test_client().get(f"{API}/issues",
                                 headers=_bearer(fresh["access_token"])).status_code == 200


def test_expire_all_tokens_over_the_control_api(app, repo):
    access = _token(app, grant_type="client_credentials").json["access_token"]
    assert app.test_client().post("/_sim/tokens/expire").status_code == 204
    assert app.test_client().get(f"{API}/issues", headers=_bearer(access)).status_code == 401


def test_refresh_tokens_rotate_and_the_old_one_is_rejected(app, state):
    first = _token(app, grant_type="client_credentials").json
    second = _token(app, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200
    assert second.json["refresh_token"] != first["refresh_token"]
    assert second.json["access_token"] != first["access_token"]
    reused = _token(app, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reused.status_code == 400 and reused.json["error"] == "invalid_grant"
    third = _token(app, grant_type="refresh_token", refresh_token=second.json["refresh_token"])
    assert third.status_code == 200
    assert state.refresh_count == 2


def test_a_refresh_token_belongs_to_its_client(app):
    tokens = _token(app, grant_type="client_credentials").json
    stolen = _token(app, headers=_client_auth("another-consumer"), grant_type="refresh_token",
                    refresh_token=tokens["refresh_token"])
    assert stolen.status_code == 400 and stolen.json["error"] == "invalid_grant"


def test_unknown_simulator_token_is_401(app, repo):
    response = app.test_client().get(f"{API}/issues", headers=_bearer("bbsim_at_made-up"))
    assert response.status_code == 401


@pytest.mark.parametrize("headers, form, error", [
    ({}, {"grant_type": "client_credentials"}, "invalid_client"),
    (None, {"grant_type": "password"}, "unsupported_grant_type"),
    (None, {}, "unsupported_grant_type"),
    (None, {"grant_type": "refresh_token"}, "invalid_request"),
    ({"Authorization": "Basic !!!"}, {"grant_type": "client_credentials"}, "invalid_client"),
])
def test_token_endpoint_errors(app, headers, form, error):
    response = _token(app, headers=headers, **form)
    assert response.status_code in (400, 401)
    assert response.json["error"] == error
