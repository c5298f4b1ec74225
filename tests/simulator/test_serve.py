"""`python -m simulator` over a real port, delivering webhooks to a real port."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
import pytest
from werkzeug.serving import make_server

from .helpers import AUTH, Receiver

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def real_receiver():
    receiver = Receiver()
    server = make_server("127.0.0.1", 0, receiver.app(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield receiver, f"http://127.0.0.1:{server.port}/hook"
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def simulator_url():
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "simulator", "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                httpx2.get(f"{url}/_sim/requests", timeout=1)
                break
            except httpx2.TransportError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.05)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_served_simulator_speaks_http_and_delivers_webhooks(simulator_url, real_receiver):
    receiver, hook_url = real_receiver
    base = f"{simulator_url}/2.0/repositories/acme/widgets"
    with httpx2.Client(headers=AUTH, timeout=10) as client:
        assert client.post(base, json={"scm": "git", "has_issues": True}).status_code == 200
        hook = client.post(f"{base}/hooks", json={"url": hook_url, "secret": "s",
                                                  "events": ["issue:created"]})
        assert hook.status_code == 201
        for n in range(3):
            created = client.post(f"{base}/issues", json={"title": f"issue {n}"})
            assert created.status_code == 201
        assert created.headers["Location"] == f"{base}/issues/3"
        page = client.get(f"{base}/issues", params={"pagelen": 2}).json()
        assert page["next"].startswith(f"{base}/issues?")       # links use the real port
        assert len(client.get(page["next"]).json()["values"]) == 1
        delivered = client.get(f"{simulator_url}/_sim/deliveries", params={"wait": 10}).json()
    assert delivered["idle"] is True
    assert [d["status"] for d in delivered["deliveries"]] == [200, 200, 200]
    assert [json.loads(r.body)["issue"]["id"] for r in receiver.received] == [1, 2, 3]
    assert all(r.headers["X-Hub-Signature"].startswith("sha256=") for r in receiver.received)
