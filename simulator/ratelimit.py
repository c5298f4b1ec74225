"""An optional, real rate limit: N API calls per rolling hour per credential.

Off by default (tests and the demo would trip it); set `state.rate_limit_per_hour = 1000`
(or POST /_sim/settings {"rate_limit_per_hour": 1000}) to hold a client to Bitbucket's budget
for authenticated /2.0/repositories calls. Over budget, the answer is Bitbucket's plain-text
429 without Retry-After, like an injected one.
"""
from __future__ import annotations

import threading
import time
from collections import defaultdict, deque

WINDOW_SECONDS = 3600.0


class RateLimiter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, key: str, limit: int | None) -> bool:
        """Count a call by `key` (a principal); False if it is over `limit` this hour."""
        if limit is None:
            return True
        now = time.monotonic()
        with self._lock:
            calls = self._calls[key]
            while calls and calls[0] <= now - WINDOW_SECONDS:
                calls.popleft()
            if len(calls) >= limit:
                return False
            calls.append(now)
            return True

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()
