"""The receiver's one write: a delivery row, durable before the 202, committed in groups.

A commit is the dearest part of a webhook request: a round trip, a WAL flush, a database
backend woken and put back to sleep, the GIL given up and fought for again. So requests that
arrive while a commit is in flight do not start their own: they wait for it, and then all go
together in the next one, as one multi-row INSERT and one commit (the "group commit" PostgreSQL
does for WAL flushes, done one step earlier). Under light load a group is a single request and
nothing waits; under load every commit carries whatever queued behind the one before, so the
cost per delivery falls as the load rises. Each request still gets its 202 only once its own
row is committed (promise 1).

A group is one statement, so one failure would fail every request in it. A dropped connection
is retried once on a new one (the engine does not ping: a ping per commit is a round trip per
commit); any other database error retries the group's rows one at a time, so that a row the
database refuses fails only its own request.
"""
from __future__ import annotations

import logging
import sys
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from worker.db.models import Delivery
from worker.sync.deliveries import insert_outcomes, insert_rows

log = logging.getLogger("bbsync.webhooks")

#: Rows per commit at most. A web process has a few request threads, so groups stay far below
#: this; the cap only bounds one statement's size if a process is given many threads.
MAX_GROUP = 64


@dataclass
class _Slot:
    row: dict[str, Any]
    outcome: tuple[str, bool] | None = None
    error: BaseException | None = None
    #: Set when the row is committed (or failed), or when it is this request's turn to commit.
    wake: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self.outcome is not None or self.error is not None


class DeliveryWriter:
    """`write(row)` stores one delivery row and returns (id, True), or (the stored row's id,
    False) when a delivery with the same (connection, X-Request-UUID) already exists."""

    def __init__(self, engine: Engine, max_group: int = MAX_GROUP,
                 insert: Callable[[Engine, list[dict[str, Any]]], list[tuple[str, bool]]] | None = None):
        self.engine = engine
        self._max_group = max_group
        #: One group's INSERT and commit (insert_group); a test may hand in a wrapper of it.
        self._insert = insert or insert_group
        self._lock = threading.Lock()
        # Under gevent, the committing request steps aside once before taking its group:
        # requests that are already running (their bodies read, their rows on the way) get to
        # queue and join this commit instead of waiting for the next one. It costs a switch,
        # and under load it doubled the rows per commit in the process with fewer connections
        # (bench/ingest). Not on threads: there time.sleep(0) waits out the kernel's timer
        # slack, about 80 us, and requests queue anyway while the committer waits on the
        # database without the GIL.
        self._step_aside = _gevent_yield()
        self._queued: list[_Slot] = []
        self._committing = False

    def write(self, row: dict[str, Any]) -> tuple[str, bool]:
        slot = _Slot(row)
        with self._lock:
            self._queued.append(slot)
            waits = self._committing
            self._committing = True
        if waits:
            slot.wake.wait()  # until a commit took this row, or it is this request's turn
        if not slot.done:
            self._commit_next_group()
        if slot.error is not None:
            raise slot.error
        assert slot.outcome is not None
        return slot.outcome

    def _commit_next_group(self) -> None:
        """Commit what is queued (this request's row first), then hand the turn to the first
        request that queued meanwhile. One thread commits at a time, and each wake-up goes to a
        thread with something to do: its row is committed, or it commits next."""
        if self._step_aside is not None:
            self._step_aside()
        with self._lock:
            group = self._queued[:self._max_group]
            del self._queued[:self._max_group]
        try:
            self._commit(group)
        finally:
            with self._lock:
                if self._queued:
                    self._queued[0].wake.set()
                else:
                    self._committing = False
            for slot in group:
                slot.wake.set()

    def _commit(self, group: list[_Slot]) -> None:
        """Fill in every slot's outcome or error; never raises."""
        try:
            outcomes = self._insert_retrying([s.row for s in group])
        except DBAPIError as exc:
            if len(group) == 1 or exc.connection_invalidated:
                for slot in group:
                    slot.error = exc
                return
            # Something in the group was refused: find out which, one row at a time.
            for slot in group:
                self._commit([slot])
            return
        except BaseException as exc:  # noqa: BLE001 - handed to each waiting request to raise
            for slot in group:
                slot.error = exc
            return
        for slot, outcome in zip(group, outcomes):
            slot.outcome = outcome

    def _insert_retrying(self, rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
        try:
            return self._insert(self.engine, rows)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            # A connection the server dropped (a restart, a failover) fails on its first use.
            # SQLAlchemy has discarded the pool's connections by now; the second try gets a new
            # one. Only the exception's type is logged: never SQL parameters or bodies.
            log.warning("webhook.db_reconnect error=%s rows=%d", type(exc.orig).__name__, len(rows))
            return self._insert(self.engine, rows)


def _gevent_yield() -> Callable[[], None] | None:
    """gevent.sleep (called with no argument: yield once) when this process runs on gevent's
    patched threads, as gunicorn's gevent workers do; None otherwise."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("threading"):
        return None
    import gevent
    return gevent.sleep


def insert_group(engine: Engine, rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """All rows in one statement and one commit; see worker.sync.deliveries.insert_rows (the
    one insert of deliveries, which this is on SQLite)."""
    if engine.dialect.name == "postgresql":
        inserted = _insert_on_postgresql(engine, rows)
        if len(inserted) == len(rows):  # no duplicates: the usual case
            return [(row["id"], True) for row in rows]
        with engine.connect() as conn:
            return insert_outcomes(conn, rows, inserted)
    with engine.begin() as conn:
        return insert_rows(conn, rows)


def _insert_on_postgresql(engine: Engine, rows: list[dict[str, Any]]) -> set[str]:
    """The ids of the rows that one INSERT stored, on a pooled connection of the receiver's
    (autocommit) engine.

    The hot path, so it runs on psycopg itself: SQL built once per group size, with PostgreSQL's
    own $n placeholders (a RawCursor sends them as they are, where psycopg would rewrite %s per
    call past 50 parameters). Through SQLAlchemy's execution layer this cost the web process
    about 15% more CPU per delivery (bench/ingest). What SQLAlchemy would do on an error is done
    here: the error is wrapped the same way, and a dropped connection empties the pool (only
    this writer uses it) so that the retry connects afresh.
    """
    columns = tuple(rows[0])
    sql = _multi_row_insert(columns, len(rows))
    pooled = engine.raw_connection()
    try:
        driver = pooled.driver_connection
        # Prepared at its first run rather than psycopg's fifth: each group size is a statement
        # of its own, and planning a multi-row INSERT was a fifth of PostgreSQL's CPU per
        # delivery. Not where preparing is switched off (prepare_threshold=None, as PgBouncer's
        # transaction pooling needs).
        prepare = driver.prepare_threshold is not None
        with psycopg.RawCursor(driver) as cursor:
            cursor.execute(sql, [row[c] for row in rows for c in columns], prepare=prepare)
            inserted = {id_ for id_, in cursor.fetchall()}
        if not driver.autocommit:
            driver.commit()
        return inserted
    except psycopg.Error as exc:
        dropped = engine.dialect.is_disconnect(exc, pooled.dbapi_connection, None)
        if dropped:
            pooled.invalidate(exc)
            engine.dispose()
        raise DBAPIError.instance(sql, None, exc, psycopg.Error, hide_parameters=True,
                                  connection_invalidated=dropped, dialect=engine.dialect) from exc
    finally:
        pooled.close()


@lru_cache(maxsize=MAX_GROUP)
def _multi_row_insert(columns: tuple[str, ...], n: int) -> str:
    known = set(Delivery.__table__.columns.keys())
    assert known.issuperset(columns), f"not columns of {Delivery.__tablename__}: {set(columns) - known}"
    width = len(columns)
    values = ", ".join("(" + ", ".join(f"${i * width + j + 1}" for j in range(width)) + ")"
                       for i in range(n))
    return (f"INSERT INTO {Delivery.__tablename__} ({', '.join(columns)}) VALUES {values} "
            "ON CONFLICT DO NOTHING RETURNING id")
