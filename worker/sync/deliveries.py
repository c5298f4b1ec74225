"""Stored deliveries: the one insert that stores them (a webhook's and reconciliation's
synthetic ones alike), the runs of their processing and its retries, and what an operator
sees: dead letters, replays, dismissals, and the events held behind a failed one (one issue's
events never apply out of order)."""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Callable, NamedTuple, TypeVar

from sqlalchemy import ARRAY, Connection, String, and_, any_, bindparam, exists, select, tuple_
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, aliased

from worker.db import ledger
from worker.db.models import Connection as ConnectionRow
from worker.db.models import Delivery, utcnow
from worker.db.session import insert_ignoring_duplicates, one_of, transaction
from worker.engine.states import DELIVERY_STUCK, DeliveryStatus, Direction, Outcome
from worker.sync import finishing
from worker.sync.finishing import AlreadyFinished

#: Processing may start this many times (retries and redeliveries after a worker died) before
#: the delivery is dead-lettered as failed, for a person to look at.
MAX_RUNS = 12
#: Transient by nature: a database blip, a lock timeout, or losing a race to create the same
#: link (the unique constraint fires; on retry the link exists). Anything else is a bug or bad
#: data and must not loop.
RETRYABLE = (OperationalError, IntegrityError)

T = TypeVar("T")


class DeliveryError(ValueError):
    pass


# --- storing ----------------------------------------------------------------------------------

def insert_rows(conn: Connection, rows: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """INSERT ... ON CONFLICT DO NOTHING for all rows in one statement, in the caller's
    transaction, then the stored id of each row that was a duplicate: (id, whether this call
    stored the row) for each row, in row order. A duplicate is a row whose (connection,
    request_uuid) is stored already."""
    inserted = set(conn.execute(insert_ignoring_duplicates(conn.dialect.name, Delivery.__table__),
                                rows).scalars())
    return insert_outcomes(conn, rows, inserted)


def insert_outcomes(conn: Connection, rows: list[dict[str, Any]],
                    inserted: set[str]) -> list[tuple[str, bool]]:
    """(id, whether this call stored the row) for each row, in row order, once an insert that
    ignored duplicates stored the rows whose ids are `inserted`."""
    missing = [row for row in rows if row["id"] not in inserted]
    stored = _stored_ids(conn, missing) if missing else {}
    outcomes = []
    for row in rows:
        if row["id"] in inserted:
            outcomes.append((row["id"], True))
        else:
            existing = stored[(row["connection_id"], row["request_uuid"])]
            # Our own id comes back when the commit of a first try reached the server but its
            # answer did not: the row is new to the caller, who has not queued it yet.
            outcomes.append((existing, existing == row["id"]))
    return outcomes


def _stored_ids(conn: Connection, rows: list[dict[str, Any]]) -> dict[tuple[int, str], str]:
    keys = {(row["connection_id"], row["request_uuid"]) for row in rows}
    found = conn.execute(select(Delivery.connection_id, Delivery.request_uuid, Delivery.id).where(
        tuple_(Delivery.connection_id, Delivery.request_uuid).in_(keys)))
    return {(connection_id, request_uuid): id_ for connection_id, request_uuid, id_ in found}


# --- processing -------------------------------------------------------------------------------

class Taken(NamedTuple):
    """What processing needs of a delivery, read as its run starts (one statement with the
    count of runs): its columns, its connection's revision (worker.connections.cached), and
    the other failed or held deliveries of its issue (as a rule none): the one it must wait
    behind, and whether any wait behind it."""
    id: str
    connection_id: int
    event_key: str
    body: str
    issue_key: str | None
    status: str
    runs: int
    connection_revision: object
    behind: str | None      # an earlier failed (or held) delivery of the issue
    holding: bool           # held deliveries of the issue exist: finishing may release them
    paused: bool = False    # its connection is paused: not processed (and no run counted)


@lru_cache(maxsize=1)
def _columns() -> tuple:
    """Built once: a statement's construction and cache key cost more than its round trip."""
    other = aliased(Delivery)
    same_issue = and_(other.connection_id == Delivery.connection_id, other.issue_key == Delivery.issue_key,
                      other.id != Delivery.id)
    behind = (select(other.id).where(same_issue, one_of(other.status, DELIVERY_STUCK),
                                     other.received_at <= Delivery.received_at)
              .order_by(other.received_at).limit(1).correlate(Delivery).scalar_subquery())
    holding = exists().where(same_issue, other.status == DeliveryStatus.HELD).correlate(Delivery)
    revision = (select(ConnectionRow.updated_at).where(ConnectionRow.id == Delivery.connection_id)
                .correlate(Delivery).scalar_subquery())
    return (Delivery.id, Delivery.connection_id, Delivery.event_key, Delivery.body, Delivery.issue_key,
            Delivery.status, Delivery.runs, revision, behind, holding, _paused())


def _paused():
    return exists().where(ConnectionRow.id == Delivery.connection_id,
                          ConnectionRow.paused_at.is_not(None)).correlate(Delivery)


def _named(column, dialect: str):
    """`column` among the ids bound as "ids". On PostgreSQL one array (`= ANY`): SQLAlchemy
    renders an expanding IN into the SQL text again at every execution (issue 14)."""
    if dialect == "postgresql":
        return column == any_(bindparam("ids", type_=ARRAY(String)))
    return column.in_(bindparam("ids", expanding=True))


@lru_cache(maxsize=2)
def _start_statement(dialect: str):
    table = Delivery.__table__
    return (table.update().where(_named(table.c.id, dialect), table.c.status == DeliveryStatus.RECEIVED,
                                 ~_paused())
            .values(runs=table.c.runs + 1).returning(*_columns()))


@lru_cache(maxsize=2)
def _take_statement(dialect: str):
    """What _start_statement reads, for every delivery named, each row locked as the UPDATE
    would lock it, and nothing written."""
    return (select(*_columns()).where(_named(Delivery.id, dialect))
            .with_for_update(of=Delivery.__table__, key_share=True))


def start_run(session: Session, delivery_id: str) -> Taken | None:
    """Count one more start of processing and read what processing needs, in one statement;
    dead-letter a delivery that keeps not finishing. Runs in its own transaction, committed
    before the work, so the count survives a crash. None: no such delivery; a status other
    than received: nothing to do."""
    return start_runs(session, [delivery_id]).get(delivery_id)


def start_runs(session: Session, delivery_ids: list[str]) -> dict[str, Taken]:
    """start_run for several deliveries (a message's), in one statement and so one commit;
    deliveries not found are left out."""
    conn = session.connection()
    rows = conn.execute(_start_statement(conn.dialect.name), {"ids": list(delivery_ids)}).all()
    taken = {row[0]: _taken(row) for row in rows}
    for delivery_id in delivery_ids:
        if delivery_id not in taken:  # not waiting (done, failed, held), paused or not there
            found = read(session, delivery_id)
            if found is not None:
                taken[delivery_id] = found
    return _dead_letter_first_over(session, delivery_ids, taken)


def take_runs(session: Session, delivery_ids: list[str]) -> dict[str, Taken]:
    """start_runs for a transaction that goes on to apply the deliveries: each is read and
    locked by one statement, and its run is counted when it is marked done, by the statement
    that marks it (worker.sync.finishing), so it is written once, not twice. If the
    transaction does not commit, the count goes with it (see worker.queue.tasks)."""
    conn = session.connection()
    rows = conn.execute(_take_statement(conn.dialect.name), {"ids": list(delivery_ids)}).all()
    taken = {}
    for row in rows:
        t = _taken(row)
        if t.status == DeliveryStatus.RECEIVED and not t.paused:
            t = t._replace(runs=t.runs + 1)
            finishing.count_at_finish(session, [t.id])
        taken[t.id] = t
    return _dead_letter_first_over(session, delivery_ids, taken)


def _dead_letter_first_over(session: Session, delivery_ids: list[str], taken: dict[str, Taken]) -> dict[str, Taken]:
    # One delivery that kills its worker is started again with every redelivery of its
    # message, and so is each one behind it, which never got its turn: only the first over
    # the limit is the one that keeps not finishing.
    over = next((i for i in delivery_ids if i in taken and taken[i].status == DeliveryStatus.RECEIVED
                 and not taken[i].paused and taken[i].runs > MAX_RUNS), None)
    if over is not None:
        d = session.get(Delivery, over)
        d.runs = taken[over].runs  # counted here, if take_runs left it to the finish
        session.info.get(finishing.UNCOUNTED, set()).discard(over)
        fail(session, d, f"dead-lettered: processing started {taken[over].runs - 1} times without "
                         f"finishing (a worker died or the event kept failing)")
        taken[over] = taken[over]._replace(status=DeliveryStatus.FAILED)
    return taken


def read(session: Session, delivery_id: str) -> Taken | None:
    """What start_run reads, without counting a run (for callers that counted it already)."""
    row = session.execute(select(*_columns()).where(Delivery.id == delivery_id)).first()
    return None if row is None else _taken(row)


def _taken(row) -> Taken:
    return Taken(*row[:9], bool(row[9]), bool(row[10]))


def finish(session: Session, delivery_id: str, status: str, error: str | None) -> None:
    """Mark the delivery done, if it is still waiting: a concurrent run that finished it first
    makes this transaction's commit raise AlreadyFinished (the row lock makes the second wait
    for the first's commit, then find it done), and it rolls back. Marked at the commit, with
    the transaction's other deliveries (worker.sync.finishing)."""
    finishing.finish(session, delivery_id, status, error)


def begin_run(delivery_id: str) -> Taken | None:
    """start_run in a transaction of its own, committed when this returns."""
    with transaction() as session:
        return start_run(session, delivery_id)


def retrying(work: Callable[[Session], T], attempts: int,
             on_retry: Callable[[int, BaseException], Any] | None = None) -> T:
    """`work(session)` in a transaction of its own, tried again at once after a RETRYABLE error
    (told to `on_retry` with the attempt's number), `attempts` times in all. The last
    attempt's error propagates, and so does any other error at once."""
    attempt = 1
    while True:
        try:
            with transaction() as session:
                return work(session)
        except RETRYABLE as exc:
            if attempt >= attempts:
                raise
            if on_retry is not None:
                on_retry(attempt, exc)
            attempt += 1


def dead_letter(delivery_id: str, reason: str) -> bool:
    """Fail a delivery still waiting to be processed, in a transaction of its own, for a person
    to look at (and replay). Returns whether it was still waiting."""
    with transaction() as session:
        d = session.get(Delivery, delivery_id)
        if d is None or d.status != DeliveryStatus.RECEIVED:
            return False
        fail(session, d, reason)
        return True


def fail(session: Session, d: Delivery, reason: str) -> None:
    d.status, d.error, d.processed_at = "failed", reason[:2000], utcnow()
    ledger.record(session, connection_id=d.connection_id, direction=Direction.FORWARD, outcome=Outcome.FAILED,
                  delivery_id=d.id, detail=reason[:2000])


# --- held, replayed and dismissed deliveries --------------------------------------------------


def hold(session: Session, d: Taken, behind: str) -> None:
    finish(session, d.id, DeliveryStatus.HELD, f"waiting behind failed delivery {behind} for {d.issue_key}")
    ledger.record(session, connection_id=d.connection_id, direction=Direction.FORWARD, outcome=Outcome.STALE,
                  delivery_id=d.id, detail=f"held: an earlier event of {d.issue_key} failed "
                                           f"({behind}); replay or dismiss it to continue")


def release(session: Session, connection_id: int, key: str | None) -> list[str]:
    """Once nothing failed remains for an issue, its held deliveries go back to the queue, in
    the order they arrived. Returns their ids, to enqueue after the commit."""
    if not key:
        return []
    held = list(session.scalars(select(Delivery).where(
        Delivery.connection_id == connection_id, Delivery.issue_key == key, Delivery.status == DeliveryStatus.HELD)
        .order_by(Delivery.received_at)))
    if not held:
        return []
    failed = session.scalar(select(Delivery.id).where(
        Delivery.connection_id == connection_id, Delivery.issue_key == key, Delivery.status == DeliveryStatus.FAILED))
    if failed is not None:
        return []
    for d in held:
        d.status, d.error, d.runs = DeliveryStatus.RECEIVED, None, 0
    return [d.id for d in held]


def replay(session: Session, delivery_id: str, who: str | None) -> list[str]:
    """Run a failed (or held) delivery again. Returns the ids to enqueue, in order."""
    d = session.get(Delivery, delivery_id)
    if d is None:
        raise LookupError(f"delivery {delivery_id} does not exist")
    if d.status not in (*DELIVERY_STUCK, DeliveryStatus.DISMISSED):
        raise DeliveryError(f"delivery {delivery_id} is {d.status}; only failed, held or dismissed "
                            f"deliveries are replayed")
    d.status, d.error, d.runs, d.processed_at = DeliveryStatus.RECEIVED, None, 0, None
    ledger.record(session, connection_id=d.connection_id, direction=Direction.FORWARD, outcome=Outcome.APPLIED,
                  delivery_id=d.id, actor=who, detail=f"replay requested by {who or 'an operator'}")
    # The events held behind it stay held until it has been processed (forward releases them).
    return [d.id]


def dismiss(session: Session, delivery_id: str, who: str | None) -> list[str]:
    d = session.get(Delivery, delivery_id)
    if d is None:
        raise LookupError(f"delivery {delivery_id} does not exist")
    if d.status not in DELIVERY_STUCK:
        raise DeliveryError(f"delivery {delivery_id} is {d.status}; only failed or held deliveries "
                            f"are dismissed")
    d.status, d.processed_at = "dismissed", utcnow()
    ledger.record(session, connection_id=d.connection_id, direction=Direction.FORWARD, outcome=Outcome.IGNORED,
                  delivery_id=d.id, actor=who, detail=f"dismissed by {who or 'an operator'}: {d.error}")
    return release(session, d.connection_id, d.issue_key)


def requeue_all_failed(session: Session, connection_id: int | None, who: str | None) -> list[str]:
    query = select(Delivery.id).where(Delivery.status == DeliveryStatus.FAILED)
    if connection_id is not None:
        query = query.where(Delivery.connection_id == connection_id)
    ids: list[str] = []
    for delivery_id in list(session.scalars(query.order_by(Delivery.received_at))):
        ids += replay(session, delivery_id, who)
    return list(dict.fromkeys(ids))
