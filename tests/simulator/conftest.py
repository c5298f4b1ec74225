"""Fixtures for the simulator's tests: a state whose webhooks are delivered, through
httpx2.WSGITransport, into a small receiving Flask app that records what it got."""
from __future__ import annotations

import httpx2
import pytest
from flask import Flask

from simulator.app import create_app
from simulator.state import SimulatorState

from .helpers import API, AUTH, PUBLIC_URL, RECEIVER_URL, Api, Receiver


@pytest.fixture
def receiver() -> Receiver:
    return Receiver()


@pytest.fixture
def state(receiver: Receiver):
    transport = httpx2.WSGITransport(app=receiver.app())
    with SimulatorState(public_url=PUBLIC_URL, transport=transport) as sim:
        yield sim


@pytest.fixture
def app(state: SimulatorState):
    return create_app(state)


@pytest.fixture
def api(app: Flask) -> Api:
    """A client whose repository acme/widgets exists, with an issue tracker."""
    client = Api(app, AUTH)
    response = client.post(API, json={"scm": "git", "has_issues": True})
    assert response.status_code == 200, response.json
    return client


@pytest.fixture
def hook(api: Api) -> dict:
    """A webhook on acme/widgets for the three issue events, with a secret."""
    response = api.post("hooks", json={
        "url": RECEIVER_URL, "description": "bbsync", "active": True, "secret": "s3cret",
        "events": ["issue:created", "issue:updated", "issue:comment_created"]})
    assert response.status_code == 201, response.json
    return response.json
