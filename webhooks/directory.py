"""The receiver's view of connections: id, repos and decrypted secrets, cached per process.

Caching keeps the hot path at "verify, one insert, one enqueue". A signature that fails against
the cached secrets triggers one reload (at most once a second per connection), so a secret
added a moment ago is honoured without letting bad requests hammer the database. A
secret that a rotation retires is dropped at its retire time, not up to a TTL later.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy.orm import Session, sessionmaker

from worker import connections

TTL_SECONDS = 30.0
MIN_RELOAD_SECONDS = 1.0


@dataclass(frozen=True)
class ConnectionView:
    id: int
    name: str
    secrets: tuple[str, ...]
    loaded_at: float
    #: Epoch seconds when a rotated-out secret among `secrets` stops being accepted.
    valid_until: float | None = None


class ConnectionDirectory:
    def __init__(self, sessions: sessionmaker[Session], clock: Callable[[], float] = time.monotonic):
        self._sessions = sessions
        self._clock = clock
        self._cache: dict[str, ConnectionView | None] = {}
        self._lock = threading.Lock()

    def _load(self, name: str) -> ConnectionView | None:
        with self._sessions() as session:
            conn = connections.get(session, name)
            until = None if conn is None else connections.secrets_valid_until(conn)
            view = None if conn is None else ConnectionView(
                conn.id, conn.name, tuple(connections.active_secrets(conn)), self._clock(),
                until.timestamp() if until else None)
        with self._lock:
            self._cache[name] = view
        return view

    def get(self, name: str) -> ConnectionView | None:
        view = self._cache.get(name)
        if view is None or self._clock() - view.loaded_at > TTL_SECONDS or (
                view.valid_until is not None and time.time() >= view.valid_until):
            return self._load(name)
        return view

    def reload_if_due(self, view: ConnectionView) -> ConnectionView | None:
        if self._clock() - view.loaded_at < MIN_RELOAD_SECONDS:
            return None
        return self._load(view.name)
