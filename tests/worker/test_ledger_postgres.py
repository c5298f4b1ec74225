"""The ledger's rows on PostgreSQL: recorded in a transaction, they go out in one statement at
its commit (one INSERT from the rows as JSON), unless a query of the transaction reads the ledger
first; every value arrives as given, and one too long for its column is refused, not cut."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import DataError

from tests.webhooks.conftest import postgres_db  # noqa: F401  (a fixture)
from worker import connections
from worker.db import ledger
from worker.db.models import LedgerEntry, Link
from worker.db.session import get_engine, transaction
from worker.engine.states import Outcome

WHEN = datetime(2024, 5, 1, 12, 30, 5, 123456, tzinfo=timezone.utc)


@pytest.fixture
def conn_id(postgres_db) -> int:
    with transaction() as session:
        conn, _ = connections.upsert(session, connections.ConnectionSpec(
            name="acme", repos=("acme/widgets",), webhook_secrets=("hook-secret",)))
        session.flush()
        return conn.id


@pytest.fixture
def inserts():
    """The ledger INSERTs sent to the database while the test runs."""
    seen: list[str] = []

    def count(_conn, _cursor, statement, _params, _context, _many):
        if statement.startswith("INSERT INTO ledger"):
            seen.append(statement)
    engine = get_engine()
    event.listen(engine, "before_cursor_execute", count)
    yield seen
    event.remove(engine, "before_cursor_execute", count)


def test_a_transactions_rows_go_in_one_statement_at_its_commit(conn_id, inserts):
    with transaction() as session:
        for i in range(5):
            ledger.record(session, connection_id=conn_id, direction="forward", outcome=Outcome.NOOP,
                          field=f"f{i}", detail=f"event {i}")
            session.execute(select(Link).where(Link.connection_id == conn_id)).all()  # not the ledger
        assert inserts == []
    assert len(inserts) == 1
    with transaction() as session:
        assert [e.field for e in session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))] == \
            [f"f{i}" for i in range(5)]


def test_a_query_that_reads_the_ledger_sees_the_rows_recorded_before_it(conn_id, inserts):
    with transaction() as session:
        ledger.record(session, connection_id=conn_id, direction="forward", outcome=Outcome.NOOP, field="a")
        inner = select(LedgerEntry.link_id).where(LedgerEntry.field == "a").scalar_subquery()
        assert session.execute(select(Link).where(Link.id == inner)).all() == []  # reads it in a subquery
        assert len(inserts) == 1
        ledger.record(session, connection_id=conn_id, direction="forward", outcome=Outcome.NOOP, field="b")
        assert session.scalars(select(LedgerEntry.field).order_by(LedgerEntry.id)).all() == ["a", "b"]


def test_every_value_arrives_as_given(conn_id):
    given = {"field": "status", "base_value": "open", "old_value": None, "new_value": "solved ✓",
             "bitbucket_value": "x" * 10_000, "target_value": "", "bitbucket_at": WHEN, "target_at": None,
             "policy": "manual", "winner": None, "actor": "ana", "detail": "line\nbreak, {braces} \"quoted\" back\\slash \\u0041"}
    with transaction() as session:
        ledger.record(session, connection_id=conn_id, direction="forward", outcome=Outcome.CONFLICT, **given)
        ledger.record(session, connection_id=conn_id, direction="reverse", outcome=Outcome.APPLIED)
    with transaction() as session:
        first, second = session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))
    assert {k: getattr(first, k) for k in given} == given
    assert (first.outcome, first.direction, first.connection_id) == ("conflict", "forward", conn_id)
    assert first.created_at.tzinfo is not None
    assert (second.field, second.detail, second.bitbucket_at) == (None, None, None)


def test_a_value_too_long_for_its_column_is_refused_not_cut(conn_id):
    with pytest.raises(DataError):
        with transaction() as session:
            ledger.record(session, connection_id=conn_id, direction="forward", outcome=Outcome.NOOP,
                          field="f" * 33)
    with transaction() as session:
        assert session.scalars(select(LedgerEntry)).all() == []
