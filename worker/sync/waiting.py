"""Work that waits to be queued: stored deliveries never processed, outbox pushes nobody holds,
escalations nobody runs. This module only finds their ids; the sweeper
(worker.queue.tasks.requeue_pending) and resuming a connection (the CLI, and the connections
API through the web process's publisher) queue them."""
from __future__ import annotations

from datetime import datetime
from typing import Iterable, NamedTuple

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db.models import Connection, Delivery, Escalation, Link
from worker.engine.states import DeliveryStatus, EscalationState
from worker.sync import claims, outbox


class Waiting(NamedTuple):
    deliveries: list[str]  # oldest first
    links: list[int]
    escalations: list[int]

    def jobs(self) -> list[tuple[str, str | int]]:
        """As queued jobs (worker.queue.task_names.BY_JOB), deliveries first, oldest first."""
        return ([("process_delivery", i) for i in self.deliveries] + [("push_link", i) for i in self.links]
                + [("escalate", i) for i in self.escalations])


def escalations(session: Session, cutoff: datetime, connection_id: int | None = None) -> list[int]:
    """Escalations still to run that nobody holds, untouched since `cutoff`: their task was
    never queued (a broker outage), or was lost, or ended without finishing them."""
    query = select(Escalation.id, Escalation.claimed_until, Escalation.claimed_by).where(
        Escalation.state == EscalationState.CREATING, Escalation.updated_at <= cutoff)
    if connection_id is not None:
        query = query.where(Escalation.connection_id == connection_id)
    rows = session.execute(query.order_by(Escalation.id))
    return [row.id for row in rows
            if not claims.is_live(row.claimed_until) or claims.holder_gone(row.claimed_by)]


def find(session: Session, cutoff: datetime, connection_id: int | None = None,
         released_links: Iterable[int] = ()) -> Waiting:
    """What waited since `cutoff`: of one connection (paused or not: resuming asks), or of
    every connection not paused (theirs wait for resume). `released_links`: links whose dead
    claims were just given back, to push as well."""
    paused = set() if connection_id is not None else set(
        session.scalars(select(Connection.id).where(Connection.paused_at.is_not(None))))
    query = select(Delivery.id).where(Delivery.status == DeliveryStatus.RECEIVED, Delivery.received_at <= cutoff)
    if connection_id is not None:
        query = query.where(Delivery.connection_id == connection_id)
    elif paused:
        query = query.where(Delivery.connection_id.not_in(paused))
    ids = list(session.scalars(query.order_by(Delivery.received_at)))
    links = sorted(set(outbox.waiting_links(session, cutoff, connection_id)) | set(released_links))
    waiting = escalations(session, cutoff, connection_id)
    if paused:  # one query per kind, not one per row
        links = _not_paused(session, Link, links, paused)
        waiting = _not_paused(session, Escalation, waiting, paused)
    return Waiting(ids, links, waiting)


def _not_paused(session: Session, model, ids: list[int], paused: set[int]) -> list[int]:
    if not ids:
        return ids
    owner = dict(session.execute(select(model.id, model.connection_id).where(model.id.in_(ids))).all())
    return [i for i in ids if owner.get(i) not in paused]
