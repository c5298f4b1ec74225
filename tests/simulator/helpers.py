"""Helpers for the simulator's tests: credentials, a webhook receiver, a test API client."""
from __future__ import annotations

import base64
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from flask import Flask, request

CAPTURES = Path(__file__).resolve().parents[1] / "fixtures" / "webhooks"
PUBLIC_URL = "http://bbsim.test"
RECEIVER_URL = "http://receiver.test/hook"
REPO = "acme/widgets"
API = f"/2.0/repositories/{REPO}"


def basic(username: str = "dev@example.com", password: str = "api-token") -> dict[str, str]:
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


AUTH = basic()


def capture(name: str) -> dict:
    """A captured Bitbucket webhook body from tests/fixtures/webhooks/."""
    return json.loads((CAPTURES / f"{name}.json").read_text())


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Records every delivery; answers with the queued statuses, then 200."""

    received: list[Received] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    gate: threading.Event | None = None      # when set, each delivery waits for it

    def app(self) -> Flask:
        app = Flask("receiver")

        @app.post("/hook")
        def hook():
            if self.gate is not None:
                self.gate.wait(timeout=10)
            self.received.append(Received(dict(request.headers), request.get_data()))
            status = self.statuses.pop(0) if self.statuses else 200
            return "", status

        return app

    def events(self, key: str | None = None) -> list[Received]:
        return [r for r in self.received if key is None or r.headers["X-Event-Key"] == key]


class Api:
    """The Flask test client with credentials and the repository's base path filled in."""

    def __init__(self, app: Flask, headers: dict[str, str]) -> None:
        self.client = app.test_client()
        self.headers = headers

    def _call(self, method: str, path: str, **kwargs):
        url = path if path.startswith(("/", "http")) else f"{API}/{path}"
        headers = {**self.headers, **kwargs.pop("headers", {})}
        return self.client.open(url, method=method, headers=headers, **kwargs)

    def get(self, path: str, **kwargs):
        return self._call("GET", path, **kwargs)

    def post(self, path: str, **kwargs):
        return self._call("POST", path, **kwargs)

    def put(self, path: str, **kwargs):
        return self._call("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs):
        return self._call("DELETE", path, **kwargs)


def create_issue(api: Api, **fields) -> dict:
    response = api.post("issues", json={"title": "Printer on fire", **fields})
    assert response.status_code == 201, response.json
    return response.json
