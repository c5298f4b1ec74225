"""The ledger: append-only record of every decision, and how it reads to a person."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Connection, event, select
from sqlalchemy.orm import Session

from worker.db.models import LedgerEntry, utcnow
from worker.db.session import insert_many, reads_table
from worker.engine.states import Outcome

OUTCOMES = tuple(Outcome)


#: Where a session keeps the ledger rows recorded in its transaction and not yet inserted.
PENDING = "ledger_pending"
_COLUMNS = tuple(c.name for c in LedgerEntry.__table__.columns if c.name != "id")


def record(db: Session | Connection, *, connection_id: int, direction: str, outcome: str,
           orm: bool = False, **fields: Any) -> LedgerEntry | None:
    """Append a decision, in the caller's transaction. With a session, the rows of a
    transaction wait in it and go to the database together, in one statement, at its commit
    (or before a query of it that reads the ledger): a message's deliveries are one
    transaction, so their twenty-odd rows cost one statement, where a statement per delivery
    cost the worker more CPU than the rows (issue 14). `orm=True` inserts what is pending and
    returns the entry as an ORM object, for a caller that needs its id. With a Core
    connection (the receiver's lean path) the row is inserted at once."""
    if outcome not in OUTCOMES:
        raise ValueError(f"unknown ledger outcome {outcome!r}")
    if isinstance(db, Connection):
        db.execute(LedgerEntry.__table__.insert().values(
            connection_id=connection_id, direction=direction, outcome=outcome, created_at=utcnow(), **fields))
        return None
    if orm:
        flush_pending(db)
        entry = LedgerEntry(connection_id=connection_id, direction=direction, outcome=outcome, **fields)
        db.add(entry)
        return entry
    row = dict.fromkeys(_COLUMNS)
    row.update(connection_id=connection_id, direction=direction, outcome=outcome, created_at=utcnow())
    row.update(fields)
    if len(row) != len(_COLUMNS):
        raise TypeError(f"not ledger columns: {sorted(set(row) - set(_COLUMNS))}")
    db.info.setdefault(PENDING, []).append(row)
    return None


def flush_pending(session: Session) -> None:
    """Insert the rows recorded in this session's transaction so far (after the ORM's own
    pending objects, which they may name)."""
    rows = session.info.pop(PENDING, None)
    if rows:
        session.flush()
        insert_rows(session.connection(), rows)


def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Ledger rows (every column but id, as `record` makes them) in one statement: a message's
    ~100 rows, ~2,000 values, cost psycopg 1.4 ms to adapt one by one, and 0.04 ms as one JSON
    text (worker.db.session.insert_many)."""
    insert_many(conn, LedgerEntry.__table__, _COLUMNS, rows)


@event.listens_for(Session, "do_orm_execute")
def _before_query(state) -> None:
    # A query in the same transaction sees every row recorded before it.
    if PENDING in state.session.info and reads_table(state.statement, LedgerEntry.__tablename__):
        flush_pending(state.session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    flush_pending(session)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(PENDING, None)


def entries(session: Session, connection_id: int, *, limit: int = 100,
            before_id: int | None = None) -> list[LedgerEntry]:
    query = select(LedgerEntry).where(LedgerEntry.connection_id == connection_id)
    if before_id is not None:
        query = query.where(LedgerEntry.id < before_id)
    return list(session.scalars(query.order_by(LedgerEntry.id.desc()).limit(limit)))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def as_dict(e: LedgerEntry) -> dict[str, Any]:
    return {
        "id": e.id, "outcome": e.outcome, "direction": e.direction, "field": e.field,
        "old": e.old_value, "new": e.new_value, "base": e.base_value,
        "bitbucket_value": e.bitbucket_value, "target_value": e.target_value,
        "bitbucket_at": _iso(e.bitbucket_at), "target_at": _iso(e.target_at),
        "policy": e.policy, "winner": e.winner, "actor": e.actor,
        "delivery": e.delivery_id, "link": e.link_id, "detail": e.detail,
        "time": _iso(e.created_at),
    }


def explain(e: LedgerEntry) -> str:
    """One line a person can read: what happened, to what, and why."""
    arrow = {"forward": "Bitbucket -> helpdesk", "reverse": "helpdesk -> Bitbucket"}.get(
        e.direction, "bbsync -> Bitbucket")
    if not e.field:
        what = ""
    elif e.outcome == Outcome.ECHO:
        what = f"{e.field} {e.bitbucket_value!r}" if e.field != "comment" else "comment"
    elif e.field == "comment":
        what = f"comment {e.new_value!r}" if e.new_value else "comment"
    elif e.old_value is None and e.new_value is None:
        # Nothing moved (a stale value, say): name the value that was seen, not "None -> None".
        seen = e.bitbucket_value if e.direction == "forward" else e.target_value
        what = f"{e.field} {seen!r}" if seen is not None else e.field
    elif e.old_value is None and e.outcome == Outcome.APPLIED:
        what = f"{e.field} = {e.new_value!r}"
    else:
        what = f"{e.field}: {e.old_value!r} -> {e.new_value!r}"
    if e.outcome == Outcome.CONFLICT:
        who = e.winner or "nobody yet (open)"
        what = (f"{e.field}: base {e.base_value!r}, Bitbucket {e.bitbucket_value!r}, helpdesk "
                f"{e.target_value!r}; policy {e.policy}, winner {who}")
    elif e.outcome == Outcome.UNMAPPED:
        what = f"{e.field}: {e.bitbucket_value!r} has no mapping"
    when = e.created_at or utcnow()  # not yet flushed: it is happening now
    parts = [when.strftime("%Y-%m-%d %H:%M:%S"), f"{e.outcome:<8}", arrow]
    if what:
        parts.append(what)
    if e.detail:
        parts.append(f"({e.detail})")
    if e.actor:
        parts.append(f"by {e.actor}")
    if e.delivery_id:
        parts.append(f"delivery {e.delivery_id}")
    return "  ".join(parts)
