"""The OAuth connect pages (webhooks/oauth.py): the one-time link redirects to Bitbucket's
authorize page, the callback stores the tokens; anything else is a plain 400 (or 502 when the
token endpoint fails) that changes no credential, echoes nothing unescaped and logs no secret."""
from __future__ import annotations

import logging
from urllib.parse import parse_qs, quote, urlsplit

import httpx2
import pytest
from sqlalchemy import select

from simulator.app import create_app as simulator_app
from simulator.state import SimulatorState
from tests.worker.bitbucket.helpers import connection_at
from webhooks import create_app, oauth
from worker.bitbucket import authorize
from worker.db.credentials import Credential
from worker.db.models import Connection
from worker.db.session import transaction

SIM = "http://bbsim.test"
BBSYNC = "https://bbsync.example"
CALLBACK = BBSYNC + "/oauth/bitbucket/callback"
CLIENT_ID, CLIENT_SECRET = "consumer-1", "consumer-secret-0123456789"


@pytest.fixture
def sim():
    with SimulatorState(public_url=SIM, deliver_webhooks=False) as state:
        state.consumers.add(CLIENT_ID, CLIENT_SECRET, CALLBACK)
        yield state


@pytest.fixture
def bitbucket(sim):
    return simulator_app(sim)


@pytest.fixture
def web(db, bitbucket):
    connection_at(SIM + "/2.0")
    app = create_app(enqueue=lambda task, arg: True)
    app.extensions[oauth.TRANSPORT] = httpx2.WSGITransport(app=bitbucket)
    return app.test_client()


def _link() -> str:
    with transaction() as session:
        link = authorize.begin(session, "acme", CLIENT_ID, CLIENT_SECRET, BBSYNC, resolve=lambda _h: [])
    return urlsplit(link).path


def _to_callback(web, bitbucket) -> str:
    """Open a new link, consent at the simulator: the callback path and query to open."""
    started = web.get(_link())
    assert started.status_code == 302
    assert started.headers["Cache-Control"] == "no-store"
    assert started.headers["Referrer-Policy"] == "no-referrer"
    at_bitbucket = urlsplit(started.headers["Location"])
    assert f"{at_bitbucket.scheme}://{at_bitbucket.netloc}{at_bitbucket.path}" == SIM + "/site/oauth2/authorize"
    back = bitbucket.test_client().get(f"{at_bitbucket.path}?{at_bitbucket.query}")
    assert back.status_code == 302
    assert back.headers["Location"].startswith(CALLBACK + "?")
    return back.headers["Location"].removeprefix(BBSYNC)


def _credential():
    with transaction() as session:
        row = session.scalar(select(Credential).join(Connection, Connection.credential_id == Credential.id))
        return (row.kind, row.secret) if row else None


def _plain_page(response, status: int) -> str:
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert response.headers["Content-Security-Policy"] == "default-src 'none'"
    return response.get_data(as_text=True)


def test_the_link_leads_through_bitbucket_to_a_connected_page(web, bitbucket, caplog):
    caplog.set_level(logging.DEBUG)
    callback = _to_callback(web, bitbucket)
    page = _plain_page(web.get(callback), 200)
    assert "Connected" in page and "acme" in page and CLIENT_ID in page
    kind, _secret = _credential()
    assert kind == "oauth"
    query = parse_qs(urlsplit(callback).query)
    secrets = [query["code"][0], query["state"][0], CLIENT_SECRET]
    assert not [s for s in secrets if s in page or s in caplog.text]

    replay = _plain_page(web.get(callback), 400)
    assert "completed already" in replay
    assert _credential() == (kind, _secret)


def test_the_link_works_once(web, bitbucket):
    link = _link()
    assert web.get(link).status_code == 302
    assert "used already" in _plain_page(web.get(link), 400)


@pytest.mark.parametrize("link_id", ["A" * 43, "x" * 5000, "%00" * 43, quote("<script>alert(1)</script>", safe="")])
def test_an_unknown_or_hostile_link_is_a_plain_400(web, link_id):
    page = _plain_page(web.get(f"/oauth/bitbucket/start/{link_id}"), 400)
    assert "<script>" not in page and "not valid" in page


@pytest.mark.parametrize("query", [
    "",                                                     # nothing at all
    "code=abc",                                             # no state
    "code=abc&state=" + "B" * 43,                           # a state we never made
    "code=abc&state=" + "s" * 100_000,                      # oversized
    "code=abc&state=%00" + "A" * 42,                        # NUL
    "code=%3Cscript%3E&state=%3Cscript%3Ealert(1)%3C/script%3E",  # HTML
    "error=%3Cimg%20src%3Dx%3E&state=" + "C" * 43,
])
def test_a_foreign_or_hostile_callback_is_a_plain_400_that_changes_nothing(web, bitbucket, query):
    before = _credential()
    page = _plain_page(web.get("/oauth/bitbucket/callback?" + query), 400)
    assert "<script>" not in page and "<img" not in page
    assert _credential() == before


def test_a_callback_without_a_code_is_a_400_and_the_state_still_works(web, bitbucket):
    callback = _to_callback(web, bitbucket)
    state = parse_qs(urlsplit(callback).query)["state"][0]
    assert "no authorization code" in _plain_page(web.get(f"/oauth/bitbucket/callback?state={state}"), 400)
    assert _credential() is None
    assert web.get(callback).status_code == 200


def test_access_denied_is_a_400_that_changes_nothing(web, bitbucket, sim):
    sim.consumers.consent = "deny"
    callback = _to_callback(web, bitbucket)
    assert "error=access_denied" in callback
    assert "access was denied" in _plain_page(web.get(callback), 400)
    assert _credential() is None


@pytest.mark.parametrize("failure", [
    lambda request: httpx2.Response(500, text="<html>boom</html>"),
    lambda request: httpx2.Response(400, json={"error": "invalid_grant"}),
    lambda request: (_ for _ in ()).throw(httpx2.ReadTimeout("slow", request=request)),
])
def test_a_failing_token_endpoint_is_a_502_that_changes_nothing(web, bitbucket, failure):
    callback = _to_callback(web, bitbucket)
    web.application.extensions[oauth.TRANSPORT] = httpx2.MockTransport(failure)
    page = _plain_page(web.get(callback), 502)
    assert "<html>boom" not in page and "Not connected" in page
    assert _credential() is None
    web.application.extensions[oauth.TRANSPORT] = httpx2.WSGITransport(app=bitbucket)
    assert web.get(callback).status_code == 400          # the state stays spent


def test_the_pages_need_no_api_token_and_the_api_still_does(web):
    assert web.get("/oauth/bitbucket/callback").status_code == 400
    assert web.get("/api/ledger?connection=acme").status_code == 401
