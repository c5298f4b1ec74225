"""Stored deliveries as an operator sees them: dead letters, replays, dismissals, and the
events held behind a failed one (one issue's events never apply out of order)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import ledger
from worker.db.models import Delivery, utcnow

#: Processing may start this many times (retries and redeliveries after a worker died) before
#: the delivery is dead-lettered as failed, for a person to look at.
MAX_RUNS = 12


class DeliveryError(ValueError):
    pass


def start_run(session: Session, delivery_id: str) -> Delivery | None:
    """Count one more start of processing; dead-letter a delivery that keeps not finishing.
    Runs in its own transaction, committed before the work, so the count survives a crash."""
    d = session.get(Delivery, delivery_id)
    if d is None or d.status != "received":
        return d
    d.runs += 1
    if d.runs > MAX_RUNS:
        fail(session, d, f"dead-lettered: processing started {d.runs - 1} times without finishing "
                         f"(a worker died or the event kept failing)")
    return d


def fail(session: Session, d: Delivery, reason: str) -> None:
    d.status, d.error, d.processed_at = "failed", reason[:2000], utcnow()
    ledger.record(session, connection_id=d.connection_id, direction="forward", outcome="failed",
                  delivery_id=d.id, detail=reason[:2000])


def blocking(session: Session, d: Delivery) -> str | None:
    """The id of an earlier failed (or held) delivery for the same issue, if any."""
    if not d.issue_key:
        return None
    return session.scalar(select(Delivery.id).where(
        Delivery.connection_id == d.connection_id, Delivery.issue_key == d.issue_key,
        Delivery.status.in_(("failed", "held")), Delivery.received_at <= d.received_at,
        Delivery.id != d.id).order_by(Delivery.received_at).limit(1))


def hold(session: Session, d: Delivery, behind: str) -> None:
    d.status, d.error = "held", f"waiting behind failed delivery {behind} for {d.issue_key}"
    ledger.record(session, connection_id=d.connection_id, direction="forward", outcome="stale",
                  delivery_id=d.id, detail=f"held: an earlier event of {d.issue_key} failed "
                                           f"({behind}); replay or dismiss it to continue")


def release(session: Session, connection_id: int, key: str | None) -> list[str]:
    """Once nothing failed remains for an issue, its held deliveries go back to the queue, in
    the order they arrived. Returns their ids, to enqueue after the commit."""
    if not key:
        return []
    held = list(session.scalars(select(Delivery).where(
        Delivery.connection_id == connection_id, Delivery.issue_key == key, Delivery.status == "held")
        .order_by(Delivery.received_at)))
    if not held:
        return []
    failed = session.scalar(select(Delivery.id).where(
        Delivery.connection_id == connection_id, Delivery.issue_key == key, Delivery.status == "failed"))
    if failed is not None:
        return []
    for d in held:
        d.status, d.error, d.runs = "received", None, 0
    return [d.id for d in held]


def replay(session: Session, delivery_id: str, who: str | None) -> list[str]:
    """Run a failed (or held) delivery again. Returns the ids to enqueue, in order."""
    d = session.get(Delivery, delivery_id)
    if d is None:
        raise LookupError(f"delivery {delivery_id} does not exist")
    if d.status not in ("failed", "held", "dismissed"):
        raise DeliveryError(f"delivery {delivery_id} is {d.status}; only failed, held or dismissed "
                            f"deliveries are replayed")
    d.status, d.error, d.runs, d.processed_at = "received", None, 0, None
    ledger.record(session, connection_id=d.connection_id, direction="forward", outcome="applied",
                  delivery_id=d.id, actor=who, detail=f"replay requested by {who or 'an operator'}")
    # The events held behind it stay held until it has been processed (forward releases them).
    return [d.id]


def dismiss(session: Session, delivery_id: str, who: str | None) -> list[str]:
    d = session.get(Delivery, delivery_id)
    if d is None:
        raise LookupError(f"delivery {delivery_id} does not exist")
    if d.status not in ("failed", "held"):
        raise DeliveryError(f"delivery {delivery_id} is {d.status}; only failed or held deliveries "
                            f"are dismissed")
    d.status, d.processed_at = "dismissed", utcnow()
    ledger.record(session, connection_id=d.connection_id, direction="forward", outcome="ignored",
                  delivery_id=d.id, actor=who, detail=f"dismissed by {who or 'an operator'}: {d.error}")
    return release(session, d.connection_id, d.issue_key)


def requeue_all_failed(session: Session, connection_id: int | None, who: str | None) -> list[str]:
    query = select(Delivery.id).where(Delivery.status == "failed")
    if connection_id is not None:
        query = query.where(Delivery.connection_id == connection_id)
    ids: list[str] = []
    for delivery_id in list(session.scalars(query.order_by(Delivery.received_at))):
        ids += replay(session, delivery_id, who)
    return list(dict.fromkeys(ids))


