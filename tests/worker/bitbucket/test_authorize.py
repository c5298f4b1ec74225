"""Connecting with OAuth 2.0's authorization code grant (worker/bitbucket/authorize.py), against
the simulator: a link is used once and expires, a state is spent once, a bad or foreign answer
changes no credential, and the stored tokens work through the client's OAuthAuth."""
from __future__ import annotations

from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from sqlalchemy import select, text

from worker.bitbucket import authorize
from worker.bitbucket.auth import auth_for
from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.credentials import CredentialStore, OAuthCredential
from worker.db.credentials import Credential
from worker.db.models import Connection, utcnow
from worker.db.oauth import OAuthAuthorization
from worker.db.session import session_factory, transaction

from .helpers import API_URL, CLIENT_ID, CLIENT_SECRET, PUBLIC_URL, connection_at

BBSYNC = "https://bbsync.example"
CALLBACK = BBSYNC + "/oauth/bitbucket/callback"


def _no_dns(_host):
    return []


@pytest.fixture
def sessions(db):
    return session_factory(db)


@pytest.fixture
def acme(db, sim):
    """Connection acme (with an API token), pointed at the simulator, whose consumer knows our
    callback."""
    connection_at(API_URL, api_token="dev@example.com:old-api-token")
    sim.consumers.add(CLIENT_ID, CLIENT_SECRET, CALLBACK)
    return "acme"


def _begin(now=None, **kwargs) -> str:
    args = dict(connection="acme", client_id=CLIENT_ID, client_secret=CLIENT_SECRET, public_url=BBSYNC)
    args.update(kwargs)
    with transaction() as session:
        return authorize.begin(session, now=now, resolve=_no_dns, **args)


def _start(link: str, now=None) -> str:
    with transaction() as session:
        return authorize.start(session, link.rsplit("/", 1)[1], now=now)


def _consent(app, authorize_url: str) -> dict[str, str]:
    """Open the authorize URL at the simulator; the query it sends the person back with."""
    parts = urlsplit(authorize_url)
    assert f"{parts.scheme}://{parts.netloc}" == PUBLIC_URL
    response = app.test_client().get(f"{parts.path}?{parts.query}")
    assert response.status_code == 302, response.data
    location = response.headers["Location"]
    assert location.startswith(CALLBACK + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _credential() -> tuple[str, bytes]:
    with transaction() as session:
        row = session.scalar(select(Credential).join(Connection, Connection.credential_id == Credential.id)
                             .where(Connection.name == "acme"))
        return row.kind, row.secret


def test_link_consent_and_callback_store_tokens_that_work(acme, sessions, sim, app, transport):
    link = _begin()
    assert link.startswith(BBSYNC + authorize.START_PATH)
    url = _start(link)
    query = parse_qs(urlsplit(url).query)
    assert url.startswith(PUBLIC_URL + "/site/oauth2/authorize?")
    assert query["client_id"] == [CLIENT_ID] and query["response_type"] == ["code"]
    assert query["redirect_uri"] == [CALLBACK] and query["code_challenge_method"] == ["S256"]
    back = _consent(app, url)

    done = authorize.complete(sessions, back["state"], back["code"], transport=transport)

    assert done == authorize.Connected("acme", f"oauth:{CLIENT_ID}")
    store = CredentialStore(sessions)
    with transaction() as session:
        credential_id = session.scalar(select(Connection.credential_id).where(Connection.name == "acme"))
    stored = store.load(credential_id)
    assert isinstance(stored.secret, OAuthCredential) and stored.secret.refresh_token
    assert stored.secret.token_url == PUBLIC_URL + "/site/oauth2/access_token"
    with BitbucketClient(API_URL, auth_for(stored, store, token_transport=transport),
                         transport=transport) as client:
        assert client.create_issue("acme/widgets", {"title": "Made with OAuth"})["id"] == 1
        sim.tokens.expire_all()         # and the worker's OAuthAuth refreshes them
        assert [i["title"] for i in client.iter_issues("acme/widgets")] == ["Made with OAuth"]
    assert sim.refresh_count == 1


def test_nothing_secret_is_stored_in_clear(acme, sessions, app, transport):
    link = _begin()
    back = _consent(app, _start(link))
    with transaction() as session:
        row = session.scalar(select(OAuthAuthorization))
        values = [str(v) for v in session.execute(select(OAuthAuthorization.__table__)).one()]
    link_id = link.rsplit("/", 1)[1]
    assert row.link_hash == authorize.digest(link_id) and row.state_hash == authorize.digest(back["state"])
    assert not [v for v in values if CLIENT_SECRET in v or link_id in v or back["state"] in v]
    authorize.complete(sessions, back["state"], back["code"], transport=transport)
    with transaction() as session:
        assert session.scalar(select(OAuthAuthorization.secret)) == b""     # spent: nothing kept


def test_a_link_opens_once_and_expires_after_ten_minutes(acme):
    link = _begin()
    _start(link)
    with pytest.raises(authorize.Refused) as used:
        _start(link)
    assert used.value.reason == "used_link"
    stale = _begin(now=utcnow() - timedelta(minutes=10, seconds=1))
    with pytest.raises(authorize.Refused) as expired:
        _start(stale)
    assert expired.value.reason == "expired_link"


@pytest.mark.parametrize("link_id", [
    "A" * 43, "", "x" * 10_000, "abc\x00def", "<script>alert(1)</script>", "A" * 42 + "=",
])
def test_an_unknown_or_hostile_link_is_refused(acme, link_id):
    with transaction() as session, pytest.raises(authorize.Refused) as refused:
        authorize.start(session, link_id)
    assert refused.value.reason == "unknown_link"
    assert not link_id or link_id not in str(refused.value)


def _unchanged(before):
    assert _credential() == before


def _flow(app):
    return _consent(app, _start(_begin()))


def test_a_replayed_state_is_refused_and_changes_nothing(acme, sessions, app, transport):
    back = _flow(app)
    authorize.complete(sessions, back["state"], back["code"], transport=transport)
    before = _credential()
    with pytest.raises(authorize.Refused) as replay:
        authorize.complete(sessions, back["state"], back["code"], transport=transport)
    assert replay.value.reason == "used_state"
    _unchanged(before)


def test_an_expired_state_is_refused_and_changes_nothing(acme, sessions, app, transport):
    before = _credential()
    back = _flow(app)
    with pytest.raises(authorize.Refused) as late:
        authorize.complete(sessions, back["state"], back["code"], transport=transport,
                           now=utcnow() + authorize.LINK_TTL)
    assert late.value.reason == "expired_state"
    _unchanged(before)


@pytest.mark.parametrize("state", [
    None, "", "B" * 43, "x" * 100_000, "st\x00ate", "<b>hi</b>", "é" * 43,
])
def test_an_unknown_foreign_or_hostile_state_is_refused(acme, sessions, app, transport, state):
    before = _credential()
    code = _flow(app)["code"]
    with pytest.raises(authorize.Refused) as refused:
        authorize.complete(sessions, state, code, transport=transport)
    assert refused.value.reason == "unknown_state"
    _unchanged(before)


def test_another_links_state_does_not_fit(acme, sessions, app, transport):
    """Two links under way: each callback is judged by its own state alone (a state is
    bound to its link's consumer, verifier and connection)."""
    before = _credential()
    first, second = _flow(app), _flow(app)
    # second's code with first's state: the simulator refuses first's verifier for it
    with pytest.raises(authorize.ExchangeFailed, match="invalid_grant"):
        authorize.complete(sessions, first["state"], second["code"], transport=transport)
    _unchanged(before)
    third = _flow(app)
    authorize.complete(sessions, third["state"], third["code"], transport=transport)
    assert _credential()[0] == "oauth"


@pytest.mark.parametrize("code", [None, "", "c" * 513, "co\x00de", "co de"])
def test_a_missing_or_hostile_code_is_refused_and_spends_nothing(acme, sessions, app, transport, code):
    before = _credential()
    back = _flow(app)
    with pytest.raises(authorize.Refused) as refused:
        authorize.complete(sessions, back["state"], code, transport=transport)
    assert refused.value.reason == "missing_code"
    _unchanged(before)
    authorize.complete(sessions, back["state"], back["code"], transport=transport)


def test_access_denied_is_refused_spends_the_state_and_changes_nothing(acme, sessions, sim, app, transport):
    before = _credential()
    sim.consumers.consent = "deny"
    back = _flow(app)
    assert back["error"] == "access_denied" and "code" not in back
    with pytest.raises(authorize.Refused, match="denied") as refused:
        authorize.complete(sessions, back["state"], None, back["error"], transport=transport)
    assert refused.value.reason == "access_denied"
    _unchanged(before)
    with pytest.raises(authorize.Refused, match="completed already"):
        authorize.complete(sessions, back["state"], "late-code", transport=transport)


def _answers(*responses):
    """A token endpoint that answers these, in order (an exception is raised as a failure)."""
    queue = list(responses)

    def handle(request: httpx2.Request) -> httpx2.Response:
        item = queue.pop(0)
        if isinstance(item, Exception):
            raise item
        return item
    return httpx2.MockTransport(handle)


@pytest.mark.parametrize("answer, message", [
    (httpx2.Response(400, json={"error": "invalid_grant"}), "answered 400 (invalid_grant)"),
    (httpx2.Response(401, json={"error": "<script>"}), "answered 401"),
    (httpx2.Response(500, text="boom"), "answered 500"),
    (httpx2.Response(503), "answered 503"),
    (httpx2.ReadTimeout("slow"), "did not answer (ReadTimeout)"),
    (httpx2.ConnectError("refused"), "did not answer (ConnectError)"),
    (httpx2.Response(200, text="<html>"), "other than a JSON object"),
    (httpx2.Response(200, json={"token_type": "bearer"}), "without usable tokens"),
    (httpx2.Response(200, json={"access_token": "has space", "expires_in": 3600}), "without usable tokens"),
    (httpx2.Response(200, json={"access_token": "a", "expires_in": "soon"}), "without usable tokens"),
])
def test_a_failed_exchange_changes_nothing_and_the_state_stays_spent(acme, sessions, app, answer, message):
    before = _credential()
    back = _flow(app)
    with pytest.raises(authorize.ExchangeFailed, match=message.replace("(", r"\(").replace(")", r"\)")):
        authorize.complete(sessions, back["state"], back["code"], transport=_answers(answer))
    _unchanged(before)
    with pytest.raises(authorize.Refused, match="completed already"):
        authorize.complete(sessions, back["state"], back["code"], transport=_answers(answer))


def test_the_exchange_sends_basic_auth_the_verifier_and_the_redirect_uri(acme, sessions, app):
    seen: list[httpx2.Request] = []

    def handle(request):
        seen.append(request)
        return httpx2.Response(200, json={"access_token": "at", "refresh_token": "rt", "expires_in": 3600})
    back = _flow(app)
    authorize.complete(sessions, back["state"], back["code"], transport=httpx2.MockTransport(handle))
    form = parse_qs(seen[0].content.decode())
    assert seen[0].headers["Authorization"].startswith("Basic ")
    assert form["grant_type"] == ["authorization_code"] and form["code"] == [back["code"]]
    assert form["redirect_uri"] == [CALLBACK] and len(form["code_verifier"][0]) >= 43
    assert "client_secret" not in form


def test_begin_checks_what_it_is_given(acme):
    for kwargs, message in [
        ({"public_url": "http://bbsync.example"}, "--public-url"),
        ({"public_url": "https://10.0.0.5"}, "private"),
        ({"public_url": "https://bbsync.example/?x=1"}, "no query"),
        ({"connection": "nobody"}, "no connection named 'nobody'"),
        ({"client_id": "has space"}, "client id"),
        ({"client_secret": ""}, "secret is empty"),
    ]:
        with pytest.raises(authorize.AuthorizeError, match=message) as error:
            _begin(**kwargs)
        assert CLIENT_SECRET not in str(error.value)
    with transaction() as session:
        assert session.scalar(text("select count(*) from oauth_authorizations")) == 0


def test_authorize_and_token_urls_follow_the_api_url():
    from worker.bitbucket.urls import oauth_urls
    assert oauth_urls("https://api.bitbucket.org/2.0") == (
        "https://bitbucket.org/site/oauth2/authorize", "https://bitbucket.org/site/oauth2/access_token")
    assert oauth_urls("http://127.0.0.1:7990/2.0") == (
        "http://127.0.0.1:7990/site/oauth2/authorize", "http://127.0.0.1:7990/site/oauth2/access_token")
