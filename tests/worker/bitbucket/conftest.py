"""Fixtures: the simulator behind httpx2.WSGITransport (no network), a fake clock whose
sleep only moves time, and a throwaway SQLite database holding the Bitbucket tables."""
from __future__ import annotations

import httpx2
import pytest
from sqlalchemy.orm import sessionmaker

from simulator.app import create_app
from simulator.state import SimulatorState
from worker.bitbucket.auth import ApiTokenAuth
from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.credentials import ApiToken, CredentialStore
from worker.db.schema import metadata
from worker.db.session import make_engine

from .helpers import API_URL, EMAIL, PUBLIC_URL, TOKEN, FakeClock


@pytest.fixture
def sim():
    """The simulator, with acme/widgets (issue tracker on); webhooks are not delivered."""
    with SimulatorState(public_url=PUBLIC_URL, deliver_webhooks=False) as state:
        state.create_repository("acme", "widgets")
        yield state


@pytest.fixture
def app(sim):
    return create_app(sim)


@pytest.fixture
def transport(app) -> httpx2.WSGITransport:
    return httpx2.WSGITransport(app=app)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(transport, clock):
    """Build clients that never really sleep: waits move the fake clock (rng 0.5 unless given)."""
    made: list[BitbucketClient] = []

    def make(auth: httpx2.Auth | None = None, **kwargs) -> BitbucketClient:
        kwargs.setdefault("transport", transport)
        kwargs.setdefault("sleep", clock.sleep)
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("rng", lambda: 0.5)
        client = BitbucketClient(API_URL, auth or ApiTokenAuth(ApiToken(EMAIL, TOKEN)), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture
def client(make_client) -> BitbucketClient:
    return make_client()


@pytest.fixture
def sessions(settings_env):
    """A sessionmaker on a fresh SQLite file with every table (ours included) created."""
    engine = make_engine(f"sqlite:///{settings_env / 'bitbucket.db'}")
    metadata.create_all(engine)
    yield sessionmaker(bind=engine, expire_on_commit=False)
    engine.dispose()


@pytest.fixture
def store(sessions, clock) -> CredentialStore:
    return CredentialStore(sessions, clock=clock)
