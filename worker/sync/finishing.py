"""Marking deliveries done, held back to the commit: the deliveries a transaction finishes are
marked in one statement as it commits, where a statement per delivery cost the worker more
CPU than the rest of its bookkeeping (issue 14).

What stays as it was: marking is conditional (a delivery another run finished first makes the
commit raise AlreadyFinished, and the transaction rolls back with every effect of this run:
the row lock makes the second run wait for the first's commit, then find it done); a query of
the transaction that reads the deliveries table sees them marked (they are written before it,
as the ledger's rows are); a rollback forgets them.

A message the broker hands out for the first time takes its deliveries with a row lock and no
write (`take`): their run is counted by the same statement that marks them done, so a
delivery costs one row version, not two. A run that does not finish (the worker dies, an
error rolls it back) leaves no count, as before; its redelivery counts apart first.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

from sqlalchemy import bindparam, event
from sqlalchemy.orm import Session

from worker.db.models import Delivery, utcnow
from worker.db.session import reads_table
from worker.engine.states import DeliveryStatus

#: session.info keys: {delivery id: (status, error, processed_at)} to mark at the commit, and
#: the ids among them whose run is counted then too.
FINISHING = "deliveries_finishing"
UNCOUNTED = "deliveries_uncounted"


class AlreadyFinished(Exception):
    """Another run of the delivery finished it first: this run's transaction is rolled back,
    so that it has no second effect."""


def finish(session: Session, delivery_id: str, status: str, error: str | None) -> None:
    """Mark the delivery done at the commit, if it is still waiting then."""
    pending = session.info.setdefault(FINISHING, {})
    if delivery_id in pending:  # the same delivery twice in one transaction
        raise AlreadyFinished(delivery_id)
    pending[delivery_id] = (status, error, utcnow())


def count_at_finish(session: Session, delivery_ids: list[str]) -> None:
    """These deliveries' runs are counted when they are marked done (see the module's note)."""
    session.info.setdefault(UNCOUNTED, set()).update(delivery_ids)


def flush(session: Session) -> None:
    """Mark what this transaction finished, in one statement; AlreadyFinished if any of it was
    no longer waiting."""
    pending: dict[str, tuple[str, str | None, Any]] = session.info.pop(FINISHING, None) or {}
    if not pending:
        return
    uncounted: set[str] = session.info.get(UNCOUNTED) or set()
    counted_now = uncounted & pending.keys()
    uncounted -= counted_now  # the rest are counted when they finish, later in the transaction
    conn = session.connection()
    if conn.dialect.name == "postgresql" and len(pending) > 1:
        ids, statuses, errors, at = zip(*((i, *v) for i, v in pending.items()))
        counted = [1 if i in counted_now else 0 for i in ids]
        done = {i for i, in conn.exec_driver_sql(_MARK_MANY, (list(ids), [str(s) for s in statuses],
                                                              list(errors), list(at), counted))}
    else:
        done = {i for i, (status, error, at) in pending.items() if conn.execute(_mark_one(), {
            "delivery_id": i, "status": status, "error": error, "processed_at": at,
            "counted": 1 if i in counted_now else 0}).rowcount == 1}
    missing = [i for i in pending if i not in done]
    if missing:
        raise AlreadyFinished(missing[0])


_MARK_MANY = (
    f"UPDATE {Delivery.__tablename__} AS d SET status = v.status, error = v.error, "
    "processed_at = v.processed_at, runs = d.runs + v.counted "
    "FROM unnest(%s::VARCHAR[], %s::VARCHAR[], %s::TEXT[], %s::TIMESTAMP WITH TIME ZONE[], %s::INTEGER[]) "
    "AS v(id, status, error, processed_at, counted) "
    f"WHERE d.id = v.id AND d.status = '{DeliveryStatus.RECEIVED.value}' RETURNING d.id")


@lru_cache(maxsize=1)
def _mark_one():
    """Built once: a statement's construction and cache key cost more than its round trip."""
    table = Delivery.__table__
    return (table.update().where(table.c.id == bindparam("delivery_id"),
                                 table.c.status == DeliveryStatus.RECEIVED)
            .values(status=bindparam("status"), error=bindparam("error"),
                    processed_at=bindparam("processed_at"), runs=table.c.runs + bindparam("counted")))


@event.listens_for(Session, "do_orm_execute")
def _before_query(state) -> None:
    if FINISHING in state.session.info and reads_table(state.statement, Delivery.__tablename__):
        flush(state.session)


@event.listens_for(Session, "before_commit")
def _before_commit(session: Session) -> None:
    flush(session)


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(FINISHING, None)
    session.info.pop(UNCOUNTED, None)
