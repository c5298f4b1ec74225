"""Bearer tokens on every `/api/...` request (worker.tokens): who is asking, and what they may
see. The webhook receivers keep their signatures, and `/healthz` stays open.

Missing, malformed, unknown or revoked: 401 with `WWW-Authenticate: Bearer`, before anything
is read. A read-only token gets 403 on every write. Failures are logged with the token's name
when it is known (never the token) and counted per client address: past FAILURES_ALLOWED in
FAILURE_WINDOW, a failure from that address is answered 429 with Retry-After instead, until its
oldest failure leaves the window. A valid token is never held back, so clients sharing an
address (a NAT, a proxy) do not lock each other out; a token is 256 random bits, so guessing
one is pointless either way.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import deque

from flask import Blueprint, Flask, current_app, g, jsonify, request

from webhooks.http import sessions
from worker import tokens

log = logging.getLogger("bbsync.auth")

FAILURES_ALLOWED = 10
FAILURE_WINDOW = 60.0
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class FailureMeter:
    """Failed authentications per client address, in this process."""

    def __init__(self, allowed: int | None = None, window: float | None = None,
                 clock=time.monotonic) -> None:
        self.allowed = FAILURES_ALLOWED if allowed is None else allowed
        self.window = FAILURE_WINDOW if window is None else window
        self.clock = clock
        self._seen: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, address: str, now: float) -> deque[float]:
        times = self._seen.setdefault(address, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def wait(self, address: str) -> float:
        """Seconds until `address` may try again (0: now)."""
        with self._lock:
            now = self.clock()
            times = self._recent(address, now)
            if len(times) < self.allowed:
                if not times:
                    self._seen.pop(address, None)
                return 0.0
            return max(0.0, times[0] + self.window - now)

    def failed(self, address: str) -> None:
        with self._lock:
            self._recent(address, self.clock()).append(self.clock())


def install(app: Flask) -> None:
    """Check every /api request. The failure meter is the app's `extensions["bbsync_auth"]`
    (one per process; a test may put in its own)."""
    app.extensions["bbsync_auth"] = FailureMeter()

    @app.before_request
    def _authenticate():
        if not request.path.startswith("/api/") and request.path != "/api":
            return None
        address = request.remote_addr or "unknown"
        try:
            with sessions().begin() as session:
                principal = tokens.authenticate(session, request.headers.get("Authorization"))
        except tokens.Rejected as exc:
            return _refused(current_app.extensions["bbsync_auth"], address, exc)
        if principal.read_only and request.method in WRITE_METHODS:
            return jsonify({"error": f"token {principal.name!r} is read-only"}), 403
        g.principal = principal
        return None


def _refused(meter: FailureMeter, address: str, exc: tokens.Rejected):
    """401; or, from an address past its allowance of failures, 429 with Retry-After. A valid
    token is never held back (clients behind one NAT address share the allowance)."""
    wait = meter.wait(address)
    meter.failed(address)
    log.warning("api.auth_failed reason=%s token=%s address=%s%s", exc, exc.name or "-", address,
                " throttled" if wait else "")
    if wait:
        response = jsonify({"error": "too many failed authentications from this address; try again later"})
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response, 429
    response = jsonify({"error": "a valid API token is required: Authorization: Bearer TOKEN"})
    response.headers["WWW-Authenticate"] = 'Bearer realm="bbsync"'
    return response, 401


def principal() -> tokens.Principal:
    return g.principal


def admins_only(bp: Blueprint) -> None:
    """Every request to `bp` needs an admin token: any other is refused, saying nothing of
    what exists (runs after `install`'s check, which answers 401 first)."""
    @bp.before_request
    def _admin():
        if not principal().admin:
            return jsonify({"error": "an admin token is required"}), 403
        return None
