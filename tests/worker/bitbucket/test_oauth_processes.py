"""Two (and more) processes refreshing one OAuth credential at the same moment: exactly one
refresh happens, everyone's call succeeds, and the rotated token is the one stored.

The processes share one SQLite file and one simulator, served on a loopback port from a thread
here (WSGITransport cannot cross processes). The token endpoint is slowed down, so the
processes really overlap: without the row lock each would spend the same refresh token and
all but one would be refused."""
from __future__ import annotations

import multiprocessing
import queue
import threading
import time

import pytest
from sqlalchemy.orm import sessionmaker
from werkzeug.serving import make_server

from simulator.app import create_app
from simulator.state import SimulatorState
from worker.bitbucket.credentials import CredentialStore, oauth_credential
from worker.db.schema import metadata
from worker.db.session import make_engine

from . import procs
from .helpers import CLIENT_ID, CLIENT_SECRET, client_credentials, refresh_with

PROCESSES = 3
TOKEN_PATH = "/site/oauth2/access_token"


def slow_token_endpoint(app, delay: float):
    def wrapped(environ, start_response):
        if environ.get("PATH_INFO") == TOKEN_PATH:
            time.sleep(delay)
        return app(environ, start_response)
    return wrapped


@pytest.fixture
def served_simulator():
    state = SimulatorState(deliver_webhooks=False)
    server = make_server("127.0.0.1", 0, slow_token_endpoint(create_app(state), 0.5),
                         threaded=True)
    url = f"http://127.0.0.1:{server.port}"
    state.public_url = url
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, url
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        state.close()


def test_processes_refreshing_at_once_refresh_exactly_once(settings_env, served_simulator):
    import httpx2

    state, url = served_simulator
    state.create_repository("acme", "widgets")
    state.create_issue("acme", "widgets", {"title": "Printer on fire"},
                       state.principal_for_basic("setup@example.com"))
    token_url = f"{url}{TOKEN_PATH}"
    first = client_credentials(httpx2.HTTPTransport(), token_url=token_url)
    state.tokens.expire_all()

    db_url = f"sqlite:///{settings_env / 'shared.db'}"
    engine = make_engine(db_url)
    metadata.create_all(engine)
    store = CredentialStore(sessionmaker(bind=engine, expire_on_commit=False))
    cred_id = store.add(oauth_credential(
        CLIENT_ID, CLIENT_SECRET, token_url=token_url, access_token=first["access_token"],
        refresh_token=first["refresh_token"], expires_at=time.time() - 10))

    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    children = [ctx.Process(target=procs.call_with_shared_credential,
                            args=(db_url, f"{url}/2.0", cred_id, barrier, results))
                for _ in range(PROCESSES)]
    for child in children:
        child.start()
    try:
        outcomes = [results.get(timeout=120) for _ in children]
    except queue.Empty:
        pytest.fail("a child process did not report")
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.terminate()
                child.join(timeout=5)
    results.close()
    results.join_thread()

    assert [o[:2] for o in outcomes] == [("ok", 1)] * PROCESSES, outcomes
    assert state.refresh_count == 1
    stored = store.load(cred_id).secret
    assert stored.refresh_token != first["refresh_token"]
    spent = refresh_with(httpx2.HTTPTransport(), first["refresh_token"], token_url=token_url)
    assert spent.status_code == 400
    logs = "\n".join(o[2] for o in outcomes)
    assert logs.count("bitbucket.oauth_refreshed ") == 1
    assert logs.count("bitbucket.oauth_refresh_skipped") == PROCESSES - 1
    for secret in (CLIENT_SECRET, first["access_token"], first["refresh_token"],
                   stored.access_token, stored.refresh_token):
        assert secret not in logs
    engine.dispose()
