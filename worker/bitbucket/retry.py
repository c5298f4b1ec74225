"""When to retry a Bitbucket call, and how long to wait first.

- 429: always retried. The request was refused, so nothing happened, whatever the method.
  Bitbucket sends no Retry-After; a proxy in between may, and then it is honoured.
- 5xx and lost connections: retried for idempotent methods (GET, PUT, DELETE). A POST that
  failed this way may or may not have taken effect, so it is retried only when the caller
  says it is safe (`retry_unsafe=True`: our callers make creates idempotent with sync
  markers and look for the marker before posting again). A connection that was never
  established (connect error or timeout, pool timeout) sent nothing and is always retried.
- Anything else (4xx): never retried. A 410 is a removed tracker; a 401 with OAuth was
  already refreshed and retried once by the auth.

Delays: exponential backoff with full jitter (a uniformly random wait between 0 and
`base * 2**(attempt-1)`, capped), so many workers hitting the same limit spread out.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Callable

import httpx2

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})

#: Transport failures that happen before a request leaves: safe to retry for any method.
NOT_SENT = (httpx2.ConnectError, httpx2.ConnectTimeout, httpx2.PoolTimeout)


@dataclass(frozen=True)
class Backoff:
    base: float = 1.0       # seconds; the first retry waits up to this long
    cap: float = 30.0       # no single wait is longer

    def delay(self, attempt: int, rng: Callable[[], float]) -> float:
        """The wait before retry number `attempt` (1 for the first retry): full jitter."""
        ceiling = min(self.cap, self.base * 2 ** (attempt - 1))
        return rng() * ceiling


def retry_after(response: httpx2.Response, now: Callable[[], float] | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    raw = raw.strip()
    try:
        seconds = float(raw)
    except ValueError:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        current = now() if now is not None else datetime.now(timezone.utc).timestamp()
        seconds = when.timestamp() - current
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def retryable_status(status: int, method: str, retry_unsafe: bool) -> bool:
    if status == 429:
        return True
    if status >= 500:
        return method.upper() in IDEMPOTENT_METHODS or retry_unsafe
    return False


def retryable_transport_error(exc: httpx2.TransportError, method: str, retry_unsafe: bool) -> bool:
    return isinstance(exc, NOT_SENT) or method.upper() in IDEMPOTENT_METHODS or retry_unsafe
