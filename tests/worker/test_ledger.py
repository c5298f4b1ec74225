"""The ledger: only named outcomes, newest first with paging, and lines a person can read."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest
from sqlalchemy import func, select

from worker import connections

from worker.db import ledger
from worker.connections import ConnectionSpec
from worker.db.models import LedgerEntry

WHEN = datetime(2024, 5, 1, 12, 30, 5, tzinfo=timezone.utc)


@pytest.fixture
def conn_id(session) -> int:
    conn, _ = connections.upsert(session, ConnectionSpec(
        name="acme", repos=("acme/widgets",), webhook_secrets=("hook-secret",)))
    session.commit()
    return conn.id


def add(session, conn_id: int, outcome: str = "applied", **fields) -> LedgerEntry:
    """Record an entry as the sync does (pending until the next query), then read it back."""
    assert ledger.record(session, connection_id=conn_id, direction=fields.pop("direction", "forward"),
                         outcome=outcome, **fields) is None
    return session.scalar(select(LedgerEntry).order_by(LedgerEntry.id.desc()).limit(1))


def test_pending_rows_are_seen_by_the_next_query_in_order_and_go_with_a_rollback(session, conn_id):
    for i in range(3):
        ledger.record(session, connection_id=conn_id, direction="forward", outcome="noop", field=f"f{i}")
    opened = ledger.record(session, orm=True, connection_id=conn_id, direction="forward",
                           outcome="conflict", field="priority")
    session.flush()
    assert opened.id is not None  # the entry an open conflict names
    assert [e.field for e in session.scalars(select(LedgerEntry).order_by(LedgerEntry.id))] == \
        ["f0", "f1", "f2", "priority"]
    ledger.record(session, connection_id=conn_id, direction="forward", outcome="noop", field="lost")
    session.rollback()
    session.commit()
    assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 0


def test_pending_rows_are_committed_with_the_transaction(db, conn_id):
    from worker.db.session import transaction
    with transaction() as s:
        ledger.record(s, connection_id=conn_id, direction="reverse", outcome="applied", field="status",
                      old_value="open", new_value="resolved")
    with transaction() as s:
        [entry] = s.scalars(select(LedgerEntry))
        assert (entry.direction, entry.field, entry.old_value, entry.new_value) == \
            ("reverse", "status", "open", "resolved")


def test_a_misnamed_column_is_an_error_at_once(session, conn_id):
    with pytest.raises(TypeError, match="not ledger columns"):
        ledger.record(session, connection_id=conn_id, direction="forward", outcome="noop", feild="x")


# --- record -------------------------------------------------------------------------------

@pytest.mark.parametrize("outcome", ledger.OUTCOMES)
def test_every_named_outcome_can_be_recorded(session, conn_id, outcome):
    entry = add(session, conn_id, outcome, field="status")
    session.commit()
    assert entry.id is not None and entry.outcome == outcome
    assert entry.created_at is not None and entry.created_at.tzinfo is not None


@pytest.mark.parametrize("outcome", ["done", "APPLIED", "", "conflicted", None])
def test_unknown_outcome_is_rejected_and_nothing_is_added(session, conn_id, outcome):
    with pytest.raises(ValueError, match="unknown ledger outcome"):
        ledger.record(session, connection_id=conn_id, direction="forward", outcome=outcome)
    session.commit()
    assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 0


def test_outcomes_are_the_designs_names():
    assert set(ledger.OUTCOMES) >= {"applied", "noop", "echo", "stale", "unmapped", "conflict",
                                    "failed"}


# --- entries ------------------------------------------------------------------------------

def test_entries_are_newest_first(session, conn_id):
    ids = [add(session, conn_id, field=f"f{i}").id for i in range(3)]
    session.commit()
    assert [e.id for e in ledger.entries(session, conn_id)] == ids[::-1]


def test_entries_page_backwards_with_before_id(session, conn_id):
    ids = [add(session, conn_id, field=f"f{i}").id for i in range(5)]
    session.commit()
    first = ledger.entries(session, conn_id, limit=2)
    assert [e.id for e in first] == [ids[4], ids[3]]
    second = ledger.entries(session, conn_id, limit=2, before_id=first[-1].id)
    assert [e.id for e in second] == [ids[2], ids[1]]
    last = ledger.entries(session, conn_id, limit=2, before_id=second[-1].id)
    assert [e.id for e in last] == [ids[0]]
    assert ledger.entries(session, conn_id, limit=2, before_id=ids[0]) == []


def test_entries_belong_to_one_connection(session, conn_id):
    other, _ = connections.upsert(session, ConnectionSpec(
        name="globex", repos=("globex/app",), webhook_secrets=("other-secret",)))
    mine = add(session, conn_id, field="status")
    add(session, other.id, field="priority")
    session.commit()
    assert [e.id for e in ledger.entries(session, conn_id)] == [mine.id]


def test_entries_of_a_connection_without_any_are_empty(session, conn_id):
    assert ledger.entries(session, conn_id) == []


# --- as_dict ------------------------------------------------------------------------------

def test_as_dict_carries_every_recorded_detail(session, conn_id):
    e = add(session, conn_id, "conflict", field="status", base_value="open", old_value="pending",
            new_value="solved", bitbucket_value="resolved", target_value="pending",
            bitbucket_at=WHEN, target_at=WHEN, policy="latest_wins", winner="source",
            actor="Ann", delivery_id="d1", detail="both sides changed; source kept")
    d = ledger.as_dict(e)
    assert d["outcome"] == "conflict" and d["direction"] == "forward" and d["field"] == "status"
    assert (d["base"], d["old"], d["new"]) == ("open", "pending", "solved")
    assert (d["bitbucket_value"], d["target_value"]) == ("resolved", "pending")
    assert d["bitbucket_at"] == d["target_at"] == "2024-05-01T12:30:05+00:00"
    assert (d["policy"], d["winner"], d["actor"], d["delivery"]) == ("latest_wins", "source", "Ann",
                                                                     "d1")
    assert d["time"] is not None


# --- explain ------------------------------------------------------------------------------

def test_explain_applied_says_what_changed_where_and_who(session, conn_id):
    e = add(session, conn_id, "applied", field="status", old_value="open", new_value="solved",
            actor="Ann", delivery_id="abc123", created_at=WHEN)
    line = ledger.explain(e)
    assert line.startswith("2024-05-01 12:30:05")
    assert "applied" in line
    assert "Bitbucket -> helpdesk" in line
    assert "status: 'open' -> 'solved'" in line
    assert "by Ann" in line
    assert "delivery abc123" in line


def test_explain_a_stale_value_names_the_value_seen(session, conn_id):
    e = add(session, conn_id, "stale", field="priority", bitbucket_value="minor", created_at=WHEN,
            detail="older than the value written at 2024-05-01T12:30:04+00:00")
    line = ledger.explain(e)
    assert "priority 'minor'" in line and "None" not in line


def test_explain_reverse_direction_names_it(session, conn_id):
    e = add(session, conn_id, "applied", direction="reverse", field="priority", old_value="major",
            new_value="blocker", created_at=WHEN)
    assert "helpdesk -> Bitbucket" in ledger.explain(e)


def test_explain_open_conflict_shows_all_three_values_and_that_nobody_won(session, conn_id):
    e = add(session, conn_id, "conflict", field="status", base_value="new",
            bitbucket_value="resolved", target_value="pending", policy="manual", winner=None,
            detail="both sides changed; awaiting a person", created_at=WHEN)
    line = ledger.explain(e)
    assert "conflict" in line
    assert "status: base 'new', Bitbucket 'resolved', helpdesk 'pending'" in line
    assert "policy manual" in line
    assert "nobody yet (open)" in line
    assert "(both sides changed; awaiting a person)" in line


def test_explain_decided_conflict_names_the_policy_and_winner(session, conn_id):
    e = add(session, conn_id, "conflict", field="priority", base_value="major",
            bitbucket_value="blocker", target_value="low", policy="bitbucket_wins",
            winner="source", created_at=WHEN)
    line = ledger.explain(e)
    assert "policy bitbucket_wins, winner source" in line
    assert "nobody yet" not in line


def test_explain_unmapped_names_the_value_without_a_mapping(session, conn_id):
    e = add(session, conn_id, "unmapped", field="status", bitbucket_value="halfway",
            detail="'halfway' has no mapping for status", created_at=WHEN)
    line = ledger.explain(e)
    assert "unmapped" in line
    assert "status: 'halfway' has no mapping" in line


def test_explain_an_entry_without_a_field_reads_as_its_detail(session, conn_id):
    e = add(session, conn_id, "ignored", detail="event repo:push is not synced by this product",
            delivery_id="d9", created_at=WHEN)
    line = ledger.explain(e)
    assert "ignored" in line and "(event repo:push is not synced by this product)" in line
    assert "delivery d9" in line
    assert "None" not in line
