"""Shared test helpers for the Bitbucket client's tests."""
from __future__ import annotations

import base64

import httpx2

PUBLIC_URL = "http://bbsim.test"
API_URL = f"{PUBLIC_URL}/2.0"
TOKEN_URL = f"{PUBLIC_URL}/site/oauth2/access_token"
REPO = "acme/widgets"
ISSUES_PATH = "/2.0/repositories/acme/widgets/issues"
EMAIL = "dev@example.com"
TOKEN = "ATATT3xFfGF0-api-token-1234567890"
CLIENT_ID = "consumer-1"
CLIENT_SECRET = "consumer-secret-0123456789"


class FakeClock:
    """time.time / time.monotonic stand-in; `sleep` records the wait and moves time on."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0
        self.sleeps.append(seconds)
        self.now += seconds

    def advance(self, seconds: float) -> None:
        self.now += seconds


def client_credentials(transport: httpx2.BaseTransport, token_url: str = TOKEN_URL,
                       client_id: str = CLIENT_ID, secret: str = CLIENT_SECRET) -> dict:
    """Tokens straight from the simulator's token endpoint (client_credentials grant)."""
    basic = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    with httpx2.Client(transport=transport) as http:
        response = http.post(token_url, data={"grant_type": "client_credentials"},
                             headers={"Authorization": f"Basic {basic}"})
    assert response.status_code == 200, response.text
    return response.json()


def refresh_with(transport: httpx2.BaseTransport, refresh_token: str,
                 token_url: str = TOKEN_URL) -> httpx2.Response:
    """Try a refresh token at the simulator directly (to show a spent one is refused)."""
    basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
    with httpx2.Client(transport=transport) as http:
        return http.post(token_url, data={"grant_type": "refresh_token",
                                          "refresh_token": refresh_token},
                         headers={"Authorization": f"Basic {basic}"})


def api_calls(sim, method: str | None = None, contains: str = "") -> list:
    """The simulator's logged /2.0 requests, filtered."""
    return [r for r in sim.request_log
            if (method is None or r.method == method) and contains in r.path]


def connection_at(api_url: str, name: str = "acme", **spec) -> None:
    """Make connection `name` (acme/widgets) and point it at `api_url`: a test host over plain
    http, which `--api-url`'s check would refuse, so it is written past the check."""
    from worker import connections
    from worker.db.session import transaction
    with transaction() as session:
        conn, _ = connections.upsert(session, connections.ConnectionSpec(
            name=name, repos=("acme/widgets",), webhook_secrets=("s3cret",), **spec))
        conn.api_url = api_url
