"""Engine and session factory, built lazily from settings (never at import time).

SQLite is the embedded default: WAL lets the web process read while the worker writes, and
`BEGIN IMMEDIATE` takes the write lock at the start of a transaction, so two processes never
both read and then deadlock upgrading to a writer. On PostgreSQL the engine's row locks do the
same job per link.
"""
from __future__ import annotations

import os
import time
import weakref
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Iterator, Sequence

import orjson
from sqlalchemy import (ColumnElement, Connection, Engine, Insert, Table, TableClause, TextClause, create_engine,
                        event, or_)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.sql import visitors

from config.settings import get_settings

_engines: dict[tuple[int, str], Engine] = {}


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves, below
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):
        conn.exec_driver_sql("BEGIN IMMEDIATE")


@lru_cache(maxsize=32)
def insert_ignoring_duplicates(dialect: str, table: Table) -> Insert:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING <primary key>, for the two databases we run
    on: a row comes back only if this call inserted it (rowcount is not reliable here).

    Built once and executed with parameters: building a statement per call costs more CPU
    than the round trip to the database.
    """
    insert = {"postgresql": pg_insert, "sqlite": sqlite_insert}[dialect]
    return insert(table).on_conflict_do_nothing().returning(*table.primary_key.columns)


def one_of(column: Any, values: Sequence[Any]) -> ColumnElement[bool]:
    """`column IN (values)` for a fixed, short list of constants, written as `=` ... OR ... so
    that a prebuilt statement holding it has no IN to expand: SQLAlchemy renders an IN's
    values into the SQL text again at every execution, which cost the worker's lock statement
    more CPU than its round trip (issue 14). The database plans both alike."""
    return or_(*(column == v for v in values))


def insert_many(conn: Connection, table: Table, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    """Rows (dicts of `columns`, an absent one NULL) in one statement. On PostgreSQL one
    INSERT ... SELECT FROM json_populate_recordset of the rows as one JSON text: the same
    statement for any number of rows, so psycopg prepares it once per connection, and one
    string made by orjson in C, where psycopg adapts each value in Python. A multi-row VALUES
    costs SQLAlchemy a cache key over every placeholder per call, and an executemany runs in
    psycopg's pipeline mode: each cost a new issue more CPU than its round trip (issue 14).
    Values go as JSON gives them (orjson: aware datetimes in ISO 8601 with their offset, enums
    by value), read by each column's own input function, which refuses one too long for it."""
    if not rows:
        return
    if conn.dialect.name != "postgresql":  # SQLite: an executemany is cheap there
        conn.execute(table.insert(), [dict.fromkeys(columns) | row for row in rows])
        return
    conn.exec_driver_sql(_json_insert(table.name, tuple(columns)), (orjson.dumps(rows).decode(),))


@lru_cache(maxsize=16)
def _json_insert(table: str, columns: tuple[str, ...]) -> str:
    names = ", ".join(columns)
    return f"INSERT INTO {table} ({names}) SELECT {names} FROM json_populate_recordset(NULL::{table}, %s::json)"


def make_engine(url: str, *, pre_ping: bool = True, autocommit: bool = False) -> Engine:
    """`pre_ping=False, autocommit=True` is for a caller whose work is one statement and who
    retries on a dropped connection itself (the webhook receiver): one round trip, not four.
    Both apply to PostgreSQL; SQLite keeps its own setup. With `pre_ping`, a pooled connection
    is pinged before use only if it sat idle (_ping_if_idle)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        engine = create_engine(url, hide_parameters=True,
                               connect_args={"timeout": 30, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    # hide_parameters: SQL errors must never print bound values (tokens, bodies) into logs.
    engine = create_engine(url, hide_parameters=True, pool_size=10, max_overflow=20,
                           **({"isolation_level": "AUTOCOMMIT"} if autocommit else {}))
    if pre_ping:
        _ping_if_idle(engine)
    return engine


#: A pooled connection unused for longer than this is pinged before it is handed out: 0, every
#: one (the web process: a request must not fail because the database restarted); a Celery
#: worker, whose tasks retry, sets WORKER_PING_AFTER_IDLE_S (worker.queue.celery_app).
PING_AFTER_IDLE_S = 0.0
WORKER_PING_AFTER_IDLE_S = 1.0


def _ping_if_idle(engine: Engine) -> None:
    """SQLAlchemy's pool_pre_ping, for connections that sat in the pool longer than
    PING_AFTER_IDLE_S: one the database dropped meanwhile (a restart, an idle timeout, a
    failover) is replaced before anyone uses it. In a worker, one checked in moments ago is
    not pinged: a ping is a round trip per transaction, which at a trickle of events, one
    transaction each, cost about a tenth of a millisecond of CPU per event (issue 14). A
    connection lost in that moment fails its statement with a disconnect, which makes the pool
    drop every connection it holds, and the task retries (OperationalError is retryable)."""

    @event.listens_for(engine, "checkin")
    def _checked_in(_dbapi_conn, record) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checked_out(dbapi_conn, record, _proxy) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since <= PING_AFTER_IDLE_S:
            return
        try:
            engine.dialect.do_ping(dbapi_conn)
        except engine.dialect.loaded_dbapi.Error as exc:
            raise DisconnectionError(f"pooled connection no longer answers: {exc.__class__.__name__}") from exc


def get_engine(url: str | None = None) -> Engine:
    """One engine per process and URL (a forked child builds its own)."""
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    engine = _engines.get(key)
    if engine is None:
        engine = _engines[key] = make_engine(url)
    return engine


_factories: dict[tuple[int, str], sessionmaker[Session]] = {}


def session_factory(url: str | None = None) -> sessionmaker[Session]:
    """One session factory per engine: a sessionmaker is a new Session class, and building one
    per transaction costs more than the transaction's own Python work."""
    url = url or get_settings().database_url
    key = (os.getpid(), url)
    factory = _factories.get(key)
    if factory is None or factory.kw["bind"] is not get_engine(url):
        factory = _factories[key] = sessionmaker(bind=get_engine(url), expire_on_commit=False)
    return factory


@contextmanager
def transaction(url: str | None = None) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    session = session_factory(url)()
    try:
        with session.begin():
            yield session
    finally:
        session.close()


_tables_read: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def reads_table(statement: Any, name: str) -> bool:
    """Whether a statement names table `name` anywhere (a subquery, a join), or may (text):
    for writes a transaction holds back until its commit, which a query of it that reads
    their table must see first. Remembered for statements built once and run again (the hot
    path's), so that asking costs a lookup."""
    names = _tables_read.get(statement)
    if names is None:
        found = set()
        for element in visitors.iterate(statement):
            if isinstance(element, TextClause):
                found.add(None)  # any table
            elif isinstance(element, TableClause):
                found.add(element.name)
        names = frozenset(found)
        try:
            _tables_read[statement] = names
        except TypeError:  # not weakly referenceable: just not remembered
            pass
    return name in names or None in names
