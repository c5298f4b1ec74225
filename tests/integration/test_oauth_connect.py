"""Connecting with OAuth 2.0 over real HTTP, as a person would: `bbsync connection oauth`
prints a link; a browser (httpx2, following redirects) opens it, passes through the
simulator's authorize page and lands on the web app's (gunicorn's) callback, which exchanges
the code; the connection then calls Bitbucket with those tokens. A replayed callback is
refused and changes nothing; no secret reaches a log."""
from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import httpx2
import pytest
from sqlalchemy.orm import sessionmaker

from tests.conftest import _clear_caches
from worker.bitbucket.auth import auth_for
from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.credentials import CredentialStore

pytestmark = pytest.mark.integration


@pytest.fixture
def stack_keys(running, monkeypatch):
    """This test process reads the stack's secrets as its processes do (same keys)."""
    monkeypatch.setenv("BBSYNC_SECRET_KEYS", running.stack.env["BBSYNC_SECRET_KEYS"])
    _clear_caches()
    yield
    _clear_caches()


def _credential(running, name: str):
    return running.scalar("select c.kind || ':' || c.id from credentials c join connections n "
                          "on n.credential_id = c.id where n.name = :name", name=name)


def test_a_person_connects_through_the_link_and_the_connection_then_uses_the_tokens(
        running, simulator, stack_keys):
    state, sim_url = simulator
    workspace = f"oa{uuid.uuid4().hex[:8]}"
    state.create_repository(workspace, "widgets")
    name = f"c{uuid.uuid4().hex[:12]}"
    running.stack.run("connection", "add", name, "--repo", f"{workspace}/widgets",
                      "--webhook-secret", "s3cret-" + uuid.uuid4().hex, "--api-url", f"{sim_url}/2.0")
    client_id, client_secret = f"key-{uuid.uuid4().hex[:8]}", "secret-" + uuid.uuid4().hex
    state.consumers.add(client_id, client_secret, f"{running.web_url}/oauth/bitbucket/callback")

    made = running.stack.run("connection", "oauth", name, "--client-id", client_id,
                             "--public-url", running.web_url,
                             env={"BBSYNC_OAUTH_CLIENT_SECRET": client_secret})
    link = made.stdout.strip().splitlines()[-1]
    assert link.startswith(f"{running.web_url}/oauth/bitbucket/start/")
    assert client_secret not in made.stdout + made.stderr

    with httpx2.Client(follow_redirects=True, timeout=30) as browser:
        page = browser.get(link)
        assert page.status_code == 200, page.text
        assert "Connected" in page.text and client_secret not in page.text
        hops = [str(r.url) for r in page.history] + [str(page.url)]
        assert hops[1].startswith(f"{sim_url}/site/oauth2/authorize?")
        callback = hops[-1]
        assert callback.startswith(f"{running.web_url}/oauth/bitbucket/callback?")
        kind_and_id = _credential(running, name)
        assert kind_and_id.startswith("oauth:")

        # The connection's client, built from that credential as the worker builds it.
        store = CredentialStore(sessionmaker(bind=running.engine))
        stored = store.load(int(kind_and_id.split(":")[1]))
        with BitbucketClient(f"{sim_url}/2.0", auth_for(stored, store)) as bitbucket:
            issue = bitbucket.create_issue(f"{workspace}/widgets", {"title": "Connected by OAuth"})
            state.tokens.expire_all()          # refreshed at the token endpoint, over HTTP
            assert [i["id"] for i in bitbucket.iter_issues(f"{workspace}/widgets")] == [issue["id"]]
        assert issue["reporter"]["display_name"] == f"OAuth consumer {client_id}"

        before = running.scalar("select secret from credentials where id = :id",
                                id=int(kind_and_id.split(":")[1]))
        replay = browser.get(callback)
        assert replay.status_code == 400 and "completed already" in replay.text
        assert running.scalar("select secret from credentials where id = :id",
                              id=int(kind_and_id.split(":")[1])) == before

    query = parse_qs(urlsplit(callback).query)
    logs = "\n".join(p.read_text(errors="replace") for p in running.stack.log_dir.rglob("*.log"))
    assert logs
    secrets = [client_secret, query["code"][0], query["state"][0], link.rsplit("/", 1)[1]]
    assert [s for s in secrets if s in logs] == []
