"""Authentication: Basic for API tokens, Bearer, and OAuth 2.0 with refresh-token rotation
persisted before use, refresh-once-on-401, and no secret in any log line."""
from __future__ import annotations

import base64
import logging

import httpx2
import pytest

from worker.bitbucket.auth import ApiTokenAuth, BearerAuth, OAuthAuth, auth_for
from worker.bitbucket.credentials import ApiToken, BearerToken, oauth_credential
from worker.bitbucket.errors import AuthFailed, Unavailable

from .helpers import (CLIENT_ID, CLIENT_SECRET, EMAIL, REPO, TOKEN, TOKEN_URL, api_calls,
                      client_credentials, refresh_with)


class Watching(httpx2.BaseTransport):
    """Passes requests on; calls `check(request)` before each API request leaves."""

    def __init__(self, inner: httpx2.BaseTransport, check) -> None:
        self.inner, self.check = inner, check

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        if request.url.path.startswith("/2.0/"):
            self.check(request)
        return self.inner.handle_request(request)


def header_of(transport_calls: list[httpx2.Request]) -> list[str]:
    return [r.headers.get("Authorization", "") for r in transport_calls]


@pytest.fixture
def issue(sim):
    sim.create_issue("acme", "widgets", {"title": "Printer on fire"},
                     sim.principal_for_basic("setup@example.com"))


@pytest.fixture
def oauth(store, transport, clock):
    """An OAuth credential whose access token expired (per its expires_at) 10 s ago."""
    tokens = client_credentials(transport)
    cred_id = store.add(oauth_credential(
        CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL, access_token=tokens["access_token"],
        refresh_token=tokens["refresh_token"], expires_at=clock.now - 10))
    return cred_id, tokens


def oauth_client(make_client, store, transport, clock, cred_id, *, api_transport=None):
    auth = OAuthAuth(store, cred_id, token_transport=transport, clock=clock)
    return make_client(auth=auth, transport=api_transport or transport)


# --- API token and bearer ---------------------------------------------------------------------

def test_api_token_is_sent_as_basic_auth(make_client, sim, issue):
    sent: list[httpx2.Request] = []
    client = make_client(auth=ApiTokenAuth(ApiToken(EMAIL, TOKEN)),
                         transport=Watching(httpx2.WSGITransport(app=_app(sim)), sent.append))
    assert client.get_issue(REPO, 1)["reporter"]["display_name"] == "setup@example.com"
    expected = "Basic " + base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode()
    assert header_of(sent) == [expected]
    assert TOKEN not in str(sent[0].url)


def test_bearer_token_is_sent_as_bearer(make_client, sim, issue):
    sent: list[httpx2.Request] = []
    client = make_client(auth=BearerAuth(BearerToken("plain-bearer-token")),
                         transport=Watching(httpx2.WSGITransport(app=_app(sim)), sent.append))
    client.get_issue(REPO, 1)
    assert header_of(sent) == ["Bearer plain-bearer-token"]


def test_auth_for_builds_the_auth_of_each_kind(store):
    api = store.load(store.add(ApiToken(EMAIL, TOKEN)))
    bearer = store.load(store.add(BearerToken("b")))
    oauth = store.load(store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET)))
    assert isinstance(auth_for(api), ApiTokenAuth)
    assert isinstance(auth_for(bearer), BearerAuth)
    assert isinstance(auth_for(oauth, store), OAuthAuth)
    with pytest.raises(ValueError):
        auth_for(oauth)


def _app(sim):
    from simulator.app import create_app
    return create_app(sim)


# --- OAuth refresh -----------------------------------------------------------------------------

def test_an_expired_access_token_is_refreshed_and_the_rotated_token_persisted_before_use(
        make_client, store, sim, transport, clock, oauth, issue):
    cred_id, old = oauth
    sim.tokens.expire_all()                 # Bitbucket agrees it has expired
    checked: list[str] = []

    def persisted_first(request: httpx2.Request) -> None:
        # When the API request leaves, the DB already holds the token it carries.
        stored = store.load(cred_id).secret
        assert request.headers["Authorization"] == f"Bearer {stored.access_token}"
        assert stored.refresh_token != old["refresh_token"]
        checked.append(stored.refresh_token)

    client = oauth_client(make_client, store, transport, clock, cred_id,
                          api_transport=Watching(transport, persisted_first))
    assert client.get_issue(REPO, 1)["id"] == 1
    assert checked and sim.refresh_count == 1
    stored = store.load(cred_id).secret
    assert stored.access_token != old["access_token"]
    assert stored.expires_at == pytest.approx(clock.now + 3600)
    assert [r.status for r in api_calls(sim)] == [200]      # refreshed before, not after a 401
    # The rotated-out refresh token is spent: only the persisted one works now.
    spent = refresh_with(transport, old["refresh_token"])
    assert spent.status_code == 400 and spent.json()["error"] == "invalid_grant"


def test_losing_the_rotated_token_would_break_the_credential(make_client, store, sim, transport,
                                                             clock, oauth, issue):
    """Why persistence matters: a second worker holding the old refresh token is refused."""
    cred_id, old = oauth
    oauth_client(make_client, store, transport, clock, cred_id).get_issue(REPO, 1)
    stale_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL,
                                          access_token=old["access_token"],
                                          refresh_token=old["refresh_token"],
                                          expires_at=clock.now - 10))
    with pytest.raises(AuthFailed, match="invalid_grant"):
        oauth_client(make_client, store, transport, clock, stale_id).get_issue(REPO, 1)
    assert sim.refresh_count == 1


def test_a_fresh_token_is_not_refreshed(make_client, store, sim, transport, clock, issue):
    tokens = client_credentials(transport)
    cred_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL,
                                         access_token=tokens["access_token"],
                                         refresh_token=tokens["refresh_token"],
                                         expires_at=clock.now + 3000))
    client = oauth_client(make_client, store, transport, clock, cred_id)
    client.get_issue(REPO, 1)
    client.get_issue(REPO, 1)
    assert sim.refresh_count == 0
    assert store.load(cred_id).secret.refresh_token == tokens["refresh_token"]


def test_a_token_is_refreshed_a_little_before_it_expires(make_client, store, sim, transport,
                                                         clock, issue):
    tokens = client_credentials(transport)
    cred_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL,
                                         access_token=tokens["access_token"],
                                         refresh_token=tokens["refresh_token"],
                                         expires_at=clock.now + 30))
    oauth_client(make_client, store, transport, clock, cred_id).get_issue(REPO, 1)
    assert sim.refresh_count == 1


def test_without_a_refresh_token_the_client_credentials_grant_is_used(make_client, store, sim,
                                                                      transport, clock, issue):
    cred_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL))
    oauth_client(make_client, store, transport, clock, cred_id).get_issue(REPO, 1)
    stored = store.load(cred_id).secret
    assert stored.access_token and stored.refresh_token and sim.refresh_count == 0


def test_a_401_refreshes_once_and_retries_once(make_client, store, sim, transport, clock, issue):
    tokens = client_credentials(transport)
    cred_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL,
                                         access_token=tokens["access_token"],
                                         refresh_token=tokens["refresh_token"],
                                         expires_at=clock.now + 3000))
    sim.tokens.expire_all()                  # revoked early: our expires_at still says fine
    client = oauth_client(make_client, store, transport, clock, cred_id)
    assert client.get_issue(REPO, 1)["id"] == 1
    assert [r.status for r in api_calls(sim)] == [401, 200]
    assert sim.refresh_count == 1
    assert store.load(cred_id).secret.access_token != tokens["access_token"]


def test_a_second_401_is_auth_failed_without_a_loop(make_client, store, sim, transport, clock,
                                                    issue):
    tokens = client_credentials(transport)
    cred_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL,
                                         access_token=tokens["access_token"],
                                         refresh_token=tokens["refresh_token"],
                                         expires_at=clock.now + 3000))
    sim.faults.add(status=401, times=5)
    client = oauth_client(make_client, store, transport, clock, cred_id)
    with pytest.raises(AuthFailed) as caught:
        client.get_issue(REPO, 1)
    assert caught.value.status == 401
    assert [r.status for r in api_calls(sim)] == [401, 401]
    assert sim.refresh_count == 1


def test_an_unreachable_token_endpoint_is_unavailable(make_client, store, transport, clock):
    def refuse(request):
        raise httpx2.ConnectError("refused")

    cred_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL,
                                         refresh_token="rt-x"))
    auth = OAuthAuth(store, cred_id, token_transport=httpx2.MockTransport(refuse), clock=clock)
    with pytest.raises(Unavailable, match="token endpoint"):
        make_client(auth=auth).get_issue(REPO, 1)
    assert store.load(cred_id).secret.refresh_token == "rt-x"      # nothing lost


def test_a_refused_grant_is_auth_failed(make_client, store, transport, clock):
    bad_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL,
                                        refresh_token="rt-revoked"))
    with pytest.raises(AuthFailed):
        oauth_client(make_client, store, transport, clock, bad_id).get_issue(REPO, 1)


def test_an_oauth_credential_is_needed_for_oauth_auth(store):
    with pytest.raises(ValueError, match="not oauth"):
        OAuthAuth(store, store.add(ApiToken(EMAIL, TOKEN)))


# --- secrets stay out of logs -----------------------------------------------------------------

def test_no_token_or_secret_appears_in_logs_during_refresh_and_401(make_client, store, sim,
                                                                   transport, clock, oauth,
                                                                   issue, caplog):
    caplog.set_level(logging.DEBUG)
    cred_id, first = oauth
    client = oauth_client(make_client, store, transport, clock, cred_id)
    client.get_issue(REPO, 1)                       # refresh: expired by expires_at
    second = store.load(cred_id).secret
    sim.tokens.expire_all()
    client.get_issue(REPO, 1)                       # 401, refresh, retry
    third = store.load(cred_id).secret
    sim.faults.add(status=429, times=1)
    make_client().get_issue(REPO, 1)                # an API-token client retrying
    assert sim.refresh_count == 2
    assert "bitbucket.oauth_refreshed" in caplog.text and "bitbucket.retry" in caplog.text
    secrets = {CLIENT_SECRET, TOKEN, first["access_token"], first["refresh_token"],
               second.access_token, second.refresh_token, third.access_token,
               third.refresh_token, base64.b64encode(f"{EMAIL}:{TOKEN}".encode()).decode(),
               base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()}
    logged = caplog.text + "\n".join(repr(r.args) + repr(r.__dict__) for r in caplog.records)
    leaked = [s for s in secrets if s in logged]
    assert leaked == []


def test_the_retry_after_a_401_is_counted_in_the_budget(make_client, store, sessions, sim,
                                                        transport, clock, issue):
    from worker.bitbucket.budget import BudgetMeter
    tokens = client_credentials(transport)
    cred_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url=TOKEN_URL,
                                         access_token=tokens["access_token"],
                                         refresh_token=tokens["refresh_token"],
                                         expires_at=clock.now + 3000))
    sim.tokens.expire_all()
    meter = BudgetMeter(sessions, clock=clock, sleep=clock.sleep)
    auth = OAuthAuth(store, cred_id, token_transport=transport, clock=clock)
    make_client(auth=auth, budget=meter).get_issue(REPO, 1)
    assert [r.status for r in api_calls(sim)] == [401, 200]
    assert meter.used(f"oauth:{CLIENT_ID}") == 2     # the token endpoint is not an API call
