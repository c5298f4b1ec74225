"""Failure injection: make the next matching API calls fail the way Bitbucket fails.

Like sentry's `MockService.break_next_api_call`, but queued and filtered:

    state.faults.add(status=429, times=3)                     # the next 3 API calls
    state.faults.add(status=503, method="PUT", path=r"/issues/\\d+$")
    state.faults.drop_webhooks(times=1)                       # lose the next delivery
    state.faults.slow(0.5, times=2, method="POST")            # answer the next 2 POSTs late

Faults are consumed first come, first served: a request takes one unit from the oldest fault
that matches it. Only /2.0 API calls are affected, never the control API or the token endpoint.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass

#: The longest delay a slow answer may be given: long enough to overlap anything, short
#: enough that no client's timeout (ours is 10 s) is what a test ends up measuring.
MAX_DELAY_SECONDS = 8.0

# What Bitbucket (or its edge) answers under load, on outages and after the 2026-08-20 issue
# removal; 401/403/404 are allowed too, for clients' error paths.
ALLOWED_STATUSES = frozenset({401, 403, 404, 410, 429, 500, 502, 503, 504})


@dataclass
class Fault:
    status: int
    remaining: int
    method: str | None
    path: re.Pattern[str] | None

    def matches(self, method: str, path: str) -> bool:
        if self.method is not None and self.method != method.upper():
            return False
        return self.path is None or self.path.search(path) is not None

    def describe(self) -> dict:
        return {"status": self.status, "times": self.remaining, "method": self.method,
                "path": self.path.pattern if self.path else None}


class FaultQueue:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []
        self._slow: list[tuple[float, Fault]] = []
        self._webhook_drops = 0

    def add(self, status: int, times: int = 1, method: str | None = None,
            path: str | None = None) -> Fault:
        """Queue `times` failures with `status` for requests matching method and path regex."""
        if status not in ALLOWED_STATUSES:
            raise ValueError(f"status must be one of {sorted(ALLOWED_STATUSES)}, not {status}")
        fault = self._fault(status, times, method, path)
        with self._lock:
            self._faults.append(fault)
        return fault

    @staticmethod
    def _fault(status: int, times: int, method: str | None, path: str | None) -> Fault:
        if times < 1:
            raise ValueError("times must be at least 1")
        try:
            pattern = re.compile(path) if path else None
        except re.error as exc:
            raise ValueError(f"path is not a valid regular expression: {exc}") from None
        return Fault(status, times, method.upper() if method else None, pattern)

    def slow(self, seconds: float, times: int = 1, method: str | None = None,
             path: str | None = None) -> Fault:
        """Serve the next `times` matching requests `seconds` late (Bitbucket under load): the
        request takes effect only after the wait, as a request stuck on its way in would."""
        if not 0 < seconds <= MAX_DELAY_SECONDS:
            raise ValueError(f"delay must be over 0 and at most {MAX_DELAY_SECONDS} seconds")
        fault = self._fault(0, times, method, path)
        with self._lock:
            self._slow.append((seconds, fault))
        return fault

    def drop_webhooks(self, times: int = 1) -> None:
        """Silently lose the next `times` webhook deliveries (a receiver outage, a lost packet)."""
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._webhook_drops += times

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()
            self._slow.clear()
            self._webhook_drops = 0

    def take(self, method: str, path: str) -> int | None:
        """The status to fail this request with (consuming one unit), or None to serve it."""
        with self._lock:
            for fault in self._faults:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._faults.remove(fault)
                    return fault.status
        return None

    def take_delay(self, method: str, path: str) -> float:
        """How late to serve this request (consuming one unit of a slow fault), or 0."""
        with self._lock:
            for entry in self._slow:
                seconds, fault = entry
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self._slow.remove(entry)
                    return seconds
        return 0.0

    def take_webhook_drop(self) -> bool:
        with self._lock:
            if self._webhook_drops:
                self._webhook_drops -= 1
                return True
        return False

    def pending(self) -> dict:
        with self._lock:
            return {"faults": [f.describe() for f in self._faults],
                    "slow": [{"delay": seconds, **f.describe()} for seconds, f in self._slow],
                    "drop_webhooks": self._webhook_drops}
