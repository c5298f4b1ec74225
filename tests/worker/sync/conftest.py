"""A deterministic two-way harness: the simulator delivers its webhooks into our real receiver
(through httpx2's WSGI transport), and the test runs the worker's sync functions itself, in
the order it wants, to pin down races (the echo that beats our commit, a crash between a
remote write and the local commit)."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import timedelta

import httpx2
import pytest
from sqlalchemy import select, update

from tests.webhooks.conftest import postgres_db  # noqa: F401  (a fixture, for pg_harness)
from simulator.app import create_app as create_simulator
from tests.conftest import authorized
from simulator.state import SimulatorState
from webhooks import create_app
from worker import connections
from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.auth import ApiTokenAuth
from worker.bitbucket.credentials import parse_api_token
from worker.db.models import Delivery, OutboxEntry, utcnow
from worker.db.session import transaction
from worker.sync import forward

SIM = "https://bitbucket.test"
REPO = "acme/widgets"
TOKEN = "dev@acme.example:api-token"


@dataclass
class Harness:
    state: SimulatorState
    web: object  # Flask test client of our app
    client: BitbucketClient

    def api(self, method: str, path: str, **kw) -> dict:
        r = self.client._http.request(method, f"repositories/{REPO}{path}", **kw)
        assert r.status_code < 300, r.text
        return r.json() if r.content else {}

    def process_webhooks(self) -> list[str]:
        """What a worker would do: process every stored delivery, oldest first."""
        assert self.state.wait_for_deliveries(10)
        with transaction() as session:
            ids = list(session.scalars(select(Delivery.id).where(Delivery.status == "received")
                                       .order_by(Delivery.received_at)))
        for delivery_id in ids:
            with transaction() as session:
                forward.process_delivery(session, delivery_id)
        return ids

    def client_factory(self, _connection_id: int) -> BitbucketClient:
        return self.client


def in_thread(fn) -> tuple[threading.Thread, list]:
    """Run `fn` on a thread (another worker, as far as the code under test can tell)."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    return thread, result


def let_claims_lapse() -> int:
    """What the passing of `claims.CLAIM` does to the claims of a worker that died: they
    expire. Returns how many there were."""
    with transaction() as session:
        return session.execute(update(OutboxEntry).where(OutboxEntry.claimed_until.is_not(None))
                               .values(claimed_until=utcnow() - timedelta(seconds=1))).rowcount


@pytest.fixture
def harness(db):
    yield from _harness()


@pytest.fixture
def pg_harness(postgres_db):
    """The same harness on a fresh PostgreSQL database."""
    yield from _harness()


def _harness():
    app = create_app(enqueue=lambda task, arg: True)  # the test plays the worker
    with transaction() as session:
        connections.upsert(session, connections.ConnectionSpec(
            name="acme", repos=(REPO,), webhook_secrets=("s3cret",), api_url=f"{SIM}/2.0", api_token=TOKEN))
    state = SimulatorState(public_url=SIM, transport=httpx2.WSGITransport(app=app))
    sim_transport = httpx2.WSGITransport(app=create_simulator(state))
    client = BitbucketClient(f"{SIM}/2.0", ApiTokenAuth(parse_api_token(TOKEN)), transport=sim_transport,
                             sleep=lambda s: None)
    h = Harness(state, authorized(app.test_client()), client)
    h.api("POST", "", json={"scm": "git", "has_issues": True})
    h.api("POST", "/hooks", json={"url": "http://bbsync.test/webhooks/bitbucket/acme", "secret": "s3cret",
                                  "active": True, "events": ["issue:created", "issue:updated",
                                                             "issue:comment_created"]})
    yield h
    client.close()
    state.close()
    ext = app.extensions["bbsync"]
    ext.deliveries.engine.dispose()  # (PostgreSQL: close them before the database is dropped)
    ext.engine.dispose()
