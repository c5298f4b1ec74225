"""Hand stored work (deliveries, outbox pushes) to the broker off the request thread.

The receiver's promise is "202 once committed"; publishing to the broker is not part of it. A
background thread per web process publishes, so that a slow or dead broker never holds a
request (Bitbucket gives up after 10 s and two retries: blocking on the broker would turn a
broker outage into lost events). Ids that fail to publish are retried with backoff; if the
process dies first, the rows are still `received` and the sweeper (`bbsync deliveries
requeue`, or any worker starting) enqueues them.
"""
from __future__ import annotations

import logging
import os
import queue
import threading
from typing import Callable

log = logging.getLogger("bbsync.webhooks")

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


class Dispatcher:
    def __init__(self, publish: Callable[[str, str | int], bool]):
        self._publish = publish
        self._queue: queue.SimpleQueue[tuple[str, str | int]] = queue.SimpleQueue()
        self._pid: int | None = None
        self._lock = threading.Lock()

    def submit(self, task: str, arg: str | int) -> None:
        """Publish task(arg) soon; `task` is a name from worker.tasks.ENQUEUEABLE."""
        self._ensure_thread()
        self._queue.put((task, arg))

    def _ensure_thread(self) -> None:
        # gunicorn forks workers after the app is built: each process needs its own thread.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._queue = queue.SimpleQueue()
                threading.Thread(target=self._run, name="bbsync-dispatch", daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        parked: list[tuple[str, str | int]] = []
        delay = RETRY_FIRST_SECONDS
        while True:
            try:
                item = self._queue.get(timeout=delay if parked else None)
            except queue.Empty:
                item = None
            batch = parked + ([item] if item is not None else [])
            parked = [job for job in batch if not self._publish(*job)]
            if parked:
                delay = min(delay * 2, RETRY_MAX_SECONDS)
                log.warning("webhook.enqueue_parked count=%d retry_in=%.0fs", len(parked), delay)
            else:
                delay = RETRY_FIRST_SECONDS
