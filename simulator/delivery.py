"""Webhook delivery, the way Bitbucket does it.

One background thread drains a queue in order, so an API call returns before its webhook is
delivered. Each event is POSTed with Bitbucket's headers; a 5xx answer or a connection error
is retried at once, at most twice more, with the same X-Request-UUID; anything else (2xx, 3xx,
4xx) ends it. Then it is given up: a receiver that was down has lost the event.
Every attempt is recorded in `records`.
"""
from __future__ import annotations

import hashlib
import hmac
import queue
import threading
from dataclasses import dataclass

import httpx2

MAX_ATTEMPTS = 3               # the first try and two retries
TIMEOUT_SECONDS = 10.0
MAX_PAYLOAD_BYTES = 256 * 1024  # larger payloads are silently dropped by Bitbucket


@dataclass(frozen=True)
class Outgoing:
    """One event for one hook, ready to send: the body bytes are what gets signed."""

    event_key: str
    hook_uuid: str             # without braces
    url: str
    secret: str | None
    body: bytes
    request_uuid: str


@dataclass(frozen=True)
class Delivery:
    """One delivery attempt (or a drop, with attempt 0 and `dropped` set)."""

    event_key: str
    hook_uuid: str
    request_uuid: str
    attempt: int
    url: str
    status: int | None = None
    error: str | None = None
    dropped: bool = False


def sign(secret: str, body: bytes) -> str:
    """The X-Hub-Signature value: sha256= and the lowercase hex HMAC of the raw body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers_for(out: Outgoing, attempt: int) -> dict[str, str]:
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "Bitbucket-Webhooks/2.0",
        "X-Event-Key": out.event_key,
        "X-Hook-UUID": out.hook_uuid,
        "X-Request-UUID": out.request_uuid,
        "X-Attempt-Number": str(attempt),
    }
    if out.secret:
        headers["X-Hub-Signature"] = sign(out.secret, out.body)
    return headers


_STOP = object()


class Dispatcher:
    def __init__(self, transport: httpx2.BaseTransport | None = None) -> None:
        self._transport = transport
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._pending = 0
        self._thread: threading.Thread | None = None
        self._closed = False
        self.records: list[Delivery] = []

    def submit(self, out: Outgoing) -> None:
        """Queue an event; payloads over the size limit are dropped here, as on Bitbucket."""
        if len(out.body) > MAX_PAYLOAD_BYTES:
            self.record_drop(out, f"payload of {len(out.body)} bytes is over 256 KB")
            return
        with self._lock:
            if self._closed:
                self.records.append(self._drop(out, "dispatcher closed"))
                return
            self._pending += 1
            if self._thread is None:
                # Started on first use, so states without hooks cost no thread.
                self._thread = threading.Thread(target=self._run, name="bbsim-webhooks",
                                                daemon=True)
                self._thread.start()
        self._queue.put(out)

    def record_drop(self, out: Outgoing, reason: str) -> None:
        with self._lock:
            self.records.append(self._drop(out, reason))

    @staticmethod
    def _drop(out: Outgoing, reason: str) -> Delivery:
        return Delivery(out.event_key, out.hook_uuid, out.request_uuid, 0, out.url,
                        error=reason, dropped=True)

    def wait(self, timeout: float = 10.0) -> bool:
        """Block until every queued event was delivered or given up; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._pending == 0, timeout=timeout)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout=TIMEOUT_SECONDS * MAX_ATTEMPTS + 1)

    def clear_records(self) -> None:
        with self._lock:
            self.records.clear()

    def _run(self) -> None:
        with httpx2.Client(transport=self._transport, timeout=TIMEOUT_SECONDS) as client:
            while True:
                out = self._queue.get()
                if out is _STOP:
                    return
                try:
                    self._deliver(client, out)
                finally:
                    with self._idle:
                        self._pending -= 1
                        self._idle.notify_all()

    def _deliver(self, client: httpx2.Client, out: Outgoing) -> None:
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                response = client.post(out.url, content=out.body,
                                       headers=headers_for(out, attempt))
            except Exception as exc:   # connection errors, timeouts, a WSGI receiver raising
                self._record(out, attempt, error=f"{type(exc).__name__}: {exc}")
                continue
            self._record(out, attempt, status=response.status_code)
            if response.status_code < 500:
                return

    def _record(self, out: Outgoing, attempt: int, status: int | None = None,
                error: str | None = None) -> None:
        with self._lock:
            self.records.append(Delivery(out.event_key, out.hook_uuid, out.request_uuid,
                                         attempt, out.url, status=status, error=error))
