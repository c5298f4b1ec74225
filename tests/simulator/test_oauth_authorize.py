"""The authorize page (GET /site/oauth2/authorize) and the authorization_code grant: a code is
single use, short-lived, and bound to its client, its redirect_uri and its PKCE challenge."""
from __future__ import annotations

import base64
from urllib.parse import parse_qs, urlsplit

import pytest

from simulator.authorize import s256

from .helpers import API

AUTHORIZE = "/site/oauth2/authorize"
TOKEN_URL = "/site/oauth2/access_token"
CALLBACK = "https://bbsync.example/oauth/bitbucket/callback"
VERIFIER = "v" * 20 + "-._~" + "0123456789abcdefghijklmnop"     # 50 characters, RFC 7636's alphabet


@pytest.fixture
def consumer(state):
    return state.consumers.add("key-1", "secret-1", CALLBACK)


def _authorize(app, **params):
    query = {"client_id": "key-1", "response_type": "code", "state": "st-1",
             "redirect_uri": CALLBACK, "code_challenge": s256(VERIFIER),
             "code_challenge_method": "S256", **params}
    return app.test_client().get(AUTHORIZE, query_string={k: v for k, v in query.items() if v is not None})


def _back(response) -> dict[str, str]:
    """The query of the redirect back to the consumer's callback."""
    assert response.status_code == 302, response.data
    location = response.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _redeem(app, code, *, client=("key-1", "secret-1"), **form):
    auth = base64.b64encode(f"{client[0]}:{client[1]}".encode()).decode()
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": CALLBACK,
            "code_verifier": VERIFIER, **form}
    return app.test_client().post(TOKEN_URL, data={k: v for k, v in form.items() if v is not None},
                                  headers={"Authorization": f"Basic {auth}"})


def test_consenting_user_is_sent_back_with_a_code_that_buys_working_tokens_once(app, state, consumer):
    state.create_repository("acme", "widgets")
    back = _back(_authorize(app))
    assert back["state"] == "st-1" and set(back) == {"code", "state"}
    tokens = _redeem(app, back["code"])
    assert tokens.status_code == 200
    assert set(tokens.json) == {"access_token", "token_type", "expires_in", "refresh_token", "scopes"}
    assert app.test_client().get(f"{API}/issues", headers={
        "Authorization": f"Bearer {tokens.json['access_token']}"}).status_code == 200
    again = _redeem(app, back["code"])
    assert again.status_code == 400 and again.json["error"] == "invalid_grant"


@pytest.mark.parametrize("change", [
    {"code_verifier": "w" * 50},                    # another verifier
    {"code_verifier": None},                        # none, though a challenge was sent
    {"code_verifier": "short"},                     # not a verifier at all
    {"redirect_uri": CALLBACK + "/other"},          # another redirect_uri
    {"redirect_uri": None},                         # none, though one was sent
])
def test_the_code_needs_its_verifier_and_its_redirect_uri(app, consumer, change):
    code = _back(_authorize(app))["code"]
    response = _redeem(app, code, **change)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"
    # A failed try spends the code too.
    assert _redeem(app, code).json["error"] == "invalid_grant"


def test_a_code_belongs_to_its_client(app, state, consumer):
    state.consumers.add("key-2", "secret-2", CALLBACK)
    code = _back(_authorize(app))["code"]
    response = _redeem(app, code, client=("key-2", "secret-2"))
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_a_registered_consumer_must_present_its_secret(app, consumer):
    code = _back(_authorize(app))["code"]
    response = _redeem(app, code, client=("key-1", "wrong"))
    assert response.status_code == 401 and response.json["error"] == "invalid_client"


def test_an_expired_code_is_refused(app, state, consumer):
    state.consumers.code_ttl = 0
    response = _redeem(app, _back(_authorize(app))["code"])
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


def test_plain_challenge_and_no_challenge(app, consumer):
    plain = _back(_authorize(app, code_challenge=VERIFIER, code_challenge_method=None))["code"]
    assert _redeem(app, plain).status_code == 200
    bare = _back(_authorize(app, code_challenge=None, code_challenge_method=None))["code"]
    assert _redeem(app, bare, code_verifier=None).status_code == 200


def test_without_redirect_uri_the_callback_url_is_used(app, consumer):
    code = _back(_authorize(app, redirect_uri=None))["code"]
    assert _redeem(app, code, redirect_uri=None).status_code == 200


def test_a_user_who_refuses_sends_access_denied_back(app, consumer):
    assert app.test_client().post("/_sim/settings", json={"oauth_consent": "deny"}).json[
        "oauth_consent"] == "deny"
    back = _back(_authorize(app))
    assert back["error"] == "access_denied" and back["state"] == "st-1" and "code" not in back
    assert app.test_client().post("/_sim/settings", json={"oauth_consent": "maybe"}).status_code == 400


@pytest.mark.parametrize("params, status, error", [
    ({"client_id": "unknown"}, 400, None),
    ({"client_id": None}, 400, None),
    ({"redirect_uri": "https://evil.example/cb"}, 400, None),
    ({"response_type": "token"}, 302, "unsupported_response_type"),
    ({"code_challenge_method": "S512"}, 302, "invalid_request"),
    ({"code_challenge": "short"}, 302, "invalid_request"),
])
def test_bad_requests_are_refused(app, consumer, params, status, error):
    response = _authorize(app, **params)
    assert response.status_code == status
    if status == 400:   # no redirect to a URL that is not the consumer's
        assert "Location" not in response.headers and response.mimetype == "text/html"
    else:
        assert _back(response)["error"] == error


def test_the_error_page_escapes_what_it_echoes(app, consumer):
    response = _authorize(app, client_id="<script>alert(1)</script>")
    assert b"<script>" not in response.data


def test_consumers_are_registered_over_the_control_api(app, state):
    client = app.test_client()
    made = client.post("/_sim/consumers", json={"client_id": "k", "client_secret": "s",
                                                "callback_url": CALLBACK})
    assert made.status_code == 201 and made.json == {"client_id": "k", "callback_url": CALLBACK}
    assert state.consumers.get("k").client_secret == "s"
    assert client.post("/_sim/consumers", json={"client_id": "k"}).status_code == 400
    assert client.post("/_sim/consumers", json={"client_id": "k", "client_secret": "s",
                                                "callback_url": "ftp://x"}).status_code == 400
    client.post("/_sim/reset")
    assert state.consumers.get("k") is None
