"""Hand stored work (deliveries, outbox pushes) to the broker off the request thread.

The receiver's promise is "202 once committed"; publishing to the broker is not part of it. A
background thread per web process publishes, so that a slow or dead broker never holds a
request (Bitbucket gives up after 10 s and two retries: blocking on the broker would turn a
broker outage into lost events). Ids that fail to publish are retried with backoff; if the
process dies first, the rows are still `received` and the sweeper (`bbsync deliveries
requeue`, or any worker starting) enqueues them.

The thread publishes in batches, at most one every BATCH_INTERVAL_SECONDS: a job that arrives
while the thread is idle goes out at once, and under load the jobs that pile up meanwhile go out
together. A publish has a fixed cost (a round trip, a pipeline, and on brokers other than Redis
a pooled producer) and this thread competes with the requests for the process, so fewer, larger
publishes leave more of it to the requests; the price is up to that interval of delay before a
task starts.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import Callable, Sequence

log = logging.getLogger("bbsync.webhooks")

Job = tuple[str, "str | int"]
#: publish(jobs) -> how many jobs, from the first, are surely queued.
PublishMany = Callable[[Sequence[Job]], int]

RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
BATCH_MAX = 100
#: Under load, how often the thread publishes. 50 ms (20 ms before): a message then carries
#: about two and a half times as many deliveries, and a worker's cost per message (the task's
#: own bookkeeping, one transaction, one commit) is spread over them (issue 14). An idle
#: thread still publishes at once, so a lone webhook is not delayed by it.
BATCH_INTERVAL_SECONDS = 0.05


def one_at_a_time(enqueue: Callable[[str, str | int], bool]) -> PublishMany:
    """A PublishMany from a function that queues one job and says whether it worked."""
    def publish(jobs: Sequence[Job]) -> int:
        for done, job in enumerate(jobs):
            if not enqueue(*job):
                return done
        return len(jobs)
    return publish


class Dispatcher:
    def __init__(self, publish: PublishMany, batch_max: int = BATCH_MAX,
                 batch_interval: float = BATCH_INTERVAL_SECONDS,
                 retry_first: float = RETRY_FIRST_SECONDS, retry_max: float = RETRY_MAX_SECONDS):
        self._publish = publish
        self._batch_max = batch_max
        self._batch_interval = batch_interval
        self._retry_first = retry_first
        self._retry_max = retry_max
        # Requests append, the thread pops: a deque's ends are safe between threads without a
        # lock, and the event wakes the thread only when it sleeps. (A queue.SimpleQueue, which
        # gevent replaces with one written in Python, cost several times more per job.)
        self._jobs: deque[Job] = deque()
        self._wake = threading.Event()
        self._pid: int | None = None
        self._lock = threading.Lock()

    def enqueue(self, task: str, arg: str | int) -> None:
        """Publish task(arg) soon; `task` is a job of worker.queue.task_names.BY_JOB."""
        self._ensure_thread()
        self._jobs.append((task, arg))
        self._wake.set()

    def _ensure_thread(self) -> None:
        # gunicorn forks workers after the app is built: each process needs its own thread.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._jobs, self._wake = deque(), threading.Event()
                threading.Thread(target=self._run, name="bbsync-dispatch", daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        parked: list[Job] = []
        delay = self._retry_first
        last_publish = float("-inf")
        while True:
            if parked:
                # Keep taking jobs while parked, but try the broker again only when the backoff
                # is over: each failed try can block for the broker's connection timeout.
                jobs = parked + self._take_until(time.monotonic() + delay)
            else:
                while not self._jobs:
                    self._wake.wait()
                    self._wake.clear()  # before looking again: a job enqueued after it sets it anew
                time.sleep(max(0.0, last_publish + self._batch_interval - time.monotonic()))
                jobs = self._take_until(None)
            last_publish = time.monotonic()
            was_parked = bool(parked)
            parked = self._publish_in_batches(jobs)
            if not parked:
                delay = self._retry_first
                continue
            if was_parked:
                delay = min(delay * 2, self._retry_max)
            log.warning("webhook.enqueue_parked count=%d retry_in=%.0fs", len(parked), delay)

    def _take_until(self, deadline: float | None) -> list[Job]:
        """What is queued now (deadline None), or everything that arrives before the deadline."""
        taken: list[Job] = []
        while True:
            self._wake.clear()
            while self._jobs:
                taken.append(self._jobs.popleft())
            remaining = 0.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0 or not self._wake.wait(remaining):
                return taken

    def _publish_in_batches(self, jobs: list[Job]) -> list[Job]:
        """Publish jobs in order; returns the jobs from the first failure on (to park)."""
        for start in range(0, len(jobs), self._batch_max):
            chunk = jobs[start:start + self._batch_max]
            try:
                done = self._publish(chunk)
            except Exception as exc:  # noqa: BLE001 - a raise must not end this thread
                # publish is meant to count failures, not raise them; if one slips through,
                # this thread dying would leave every later job of the process unpublished.
                log.error("webhook.enqueue_raised jobs=%d error=%s", len(chunk), type(exc).__name__)
                done = 0
            if done < len(chunk):
                return jobs[start + done:]
        return []
