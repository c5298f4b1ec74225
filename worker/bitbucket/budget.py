"""The per-credential request budget, metered over a rolling hour, shared across processes.

Bitbucket allows 1,000 requests/hour per credential (per user, access token or OAuth
consumer), shared by everything using it. Every request we send is counted here first,
retries included, in the `api_budget` table: one row per credential key and minute, upserted.
The count "in the rolling hour" is the sum of the last 60 minute buckets.

Below `soft_limit` (default 900) a call goes at once. From there on calls are spread out: each
waits the time until the oldest bucket leaves the window divided by the headroom left, so
the headroom is never used up before the window frees some. At `limit` (1,000) a call waits
until enough old buckets have left. If the wait would exceed the caller's `max_wait`,
`acquire` raises BudgetExhausted (with `retry_after`) and counts nothing.

The increment and the read happen in one transaction whose first statement writes the
current bucket: on SQLite `BEGIN IMMEDIATE` serializes it with other writers, on PostgreSQL
the upserted row's lock does, so two processes do not both take the last unit. (Across a
minute boundary on PostgreSQL two processes lock different rows; the margin between the soft
and the hard limit absorbs that.)
"""
from __future__ import annotations

import logging
import threading
import time
from functools import lru_cache
from typing import Callable

from sqlalchemy import Insert, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from worker.db.credentials import ApiBudget

from .errors import BudgetExhausted

log = logging.getLogger("bbsync.bitbucket")

BUCKET_SECONDS = 60
WINDOW_BUCKETS = 60                  # a rolling hour of minute buckets
DEFAULT_LIMIT = 1000                 # Bitbucket's requests/hour per credential
DEFAULT_SOFT_LIMIT = 900
DEFAULT_MAX_WAIT = 60.0


@lru_cache(maxsize=4)
def _increment(dialect: str) -> Insert:
    """INSERT ... ON CONFLICT DO UPDATE SET count = count + 1, on the two databases we run on."""
    insert = {"postgresql": pg_insert, "sqlite": sqlite_insert}.get(dialect)
    if insert is None:
        raise RuntimeError(f"the budget meter supports PostgreSQL and SQLite, not {dialect}")
    table = ApiBudget.__table__
    stmt = insert(table).values(count=1)
    return stmt.on_conflict_do_update(index_elements=[table.c.credential_key, table.c.minute],
                                      set_={"count": table.c.count + 1})


def _leaves_window(minute: int) -> float:
    """The moment a bucket stops counting (epoch seconds)."""
    return float((minute + WINDOW_BUCKETS) * BUCKET_SECONDS)


class BudgetMeter:
    def __init__(self, sessions: sessionmaker[Session], *, limit: int = DEFAULT_LIMIT,
                 soft_limit: int = DEFAULT_SOFT_LIMIT, max_wait: float = DEFAULT_MAX_WAIT,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if limit < 1 or not 0 < soft_limit <= limit:
            raise ValueError("need 0 < soft_limit <= limit")
        self._sessions = sessions
        self.limit = limit
        self.soft_limit = soft_limit
        self.max_wait = max_wait
        self._clock = clock
        self._sleep = sleep
        self._pruned: dict[str, int] = {}
        self._pruned_lock = threading.Lock()

    def used(self, key: str) -> int:
        """Requests counted for this credential key in the rolling hour (for operators)."""
        minute = int(self._clock() // BUCKET_SECONDS)
        with self._sessions() as session:
            return int(session.scalar(
                select(func.coalesce(func.sum(ApiBudget.count), 0)).where(
                    ApiBudget.credential_key == key,
                    ApiBudget.minute > minute - WINDOW_BUCKETS)) or 0)

    def acquire(self, key: str, *, max_wait: float | None = None) -> float:
        """Count one request for `key`, waiting first if the budget says so. Returns the
        seconds waited; raises BudgetExhausted if the wait would exceed `max_wait`."""
        max_wait = self.max_wait if max_wait is None else max_wait
        waited = 0.0
        paced = False
        while True:
            now = self._clock()
            wait, reason, used = self._try_take(key, now, paced)
            if wait <= 0:
                if waited:
                    log.info("bitbucket.budget_acquired key=%s used=%d waited=%.2f", key,
                             used + 1, waited)
                return waited
            if waited + wait > max_wait:
                log.warning("bitbucket.budget_exhausted key=%s used=%d limit=%d retry_after=%.1f",
                            key, used, self.limit, wait)
                raise BudgetExhausted(
                    f"request budget for {key} spent: {used} requests in the last hour "
                    f"(limit {self.limit}); next request possible in {wait:.0f} s",
                    key=key, used=used, retry_after=wait)
            log.info("bitbucket.budget_%s key=%s used=%d soft_limit=%d limit=%d delay=%.2f",
                     "slowdown" if reason == "soft" else "wait", key, used, self.soft_limit,
                     self.limit, wait)
            self._sleep(wait)
            waited += wait
            paced = True        # waited once: from now on only the hard limit holds us back

    def _try_take(self, key: str, now: float, paced: bool) -> tuple[float, str, int]:
        """In one transaction: count this request, read the hour, and keep the count only
        if no wait is needed. Returns (wait, reason, used before this request)."""
        minute = int(now // BUCKET_SECONDS)
        with self._sessions() as session:
            session.execute(_increment(session.get_bind().dialect.name),
                            {"credential_key": key, "minute": minute})
            rows = session.execute(
                select(ApiBudget.minute, ApiBudget.count)
                .where(ApiBudget.credential_key == key,
                       ApiBudget.minute > minute - WINDOW_BUCKETS)
                .order_by(ApiBudget.minute)).all()
            buckets = [(m, c - (1 if m == minute else 0)) for m, c in rows]
            buckets = [(m, c) for m, c in buckets if c > 0]
            used = sum(c for _, c in buckets)
            wait, reason = self._wait(buckets, used, now, paced)
            if wait > 0:
                session.rollback()
                return wait, reason, used
            self._prune(session, key, minute)
            session.commit()
            return 0.0, "", used

    def _wait(self, buckets: list[tuple[int, int]], used: int, now: float,
              paced: bool) -> tuple[float, str]:
        """How long to wait before one more request, given the hour's buckets (oldest first,
        not counting this request)."""
        if used < self.soft_limit:
            return 0.0, ""
        if used >= self.limit:
            excess = used - self.limit + 1          # buckets that must leave the window first
            for minute, count in buckets:
                excess -= count
                if excess <= 0:
                    return max(_leaves_window(minute) - now, 0.001), "limit"
            return float(WINDOW_BUCKETS * BUCKET_SECONDS), "limit"     # not reached
        if paced:
            return 0.0, ""
        headroom = self.limit - used
        return max(_leaves_window(buckets[0][0]) - now, 0.0) / headroom, "soft"

    def _prune(self, session: Session, key: str, minute: int) -> None:
        """Forget buckets that left the window (once per key and minute per process)."""
        with self._pruned_lock:
            if self._pruned.get(key) == minute:
                return
            self._pruned[key] = minute
        session.execute(delete(ApiBudget).where(ApiBudget.credential_key == key,
                                                ApiBudget.minute <= minute - WINDOW_BUCKETS))
