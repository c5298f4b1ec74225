"""What an event older than what its link holds still tells (worker.sync.forward calls these
when worker.engine.decide finds it stale): the Bitbucket edit that our later write replaced, a
conflict decided now that its webhook says when it happened; and our own earlier writes seen
back late, echoes that must not move the shadow.
"""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import connections

from worker.db import ledger
from worker.db.models import Connection, Delivery, Link, OutboxEntry, Shadow, utcnow
from worker.engine.decide import ShadowPair, late_echoes, pick_winner
from worker.engine.events import MISSING, IssueEvent
from worker.engine.states import Direction, OutboxKind, OutboxState, Outcome, Winner
from worker.sync import conflicts, links
from worker.sync.outbox import to_bitbucket
from worker.sync.reverse import ECHO_WINDOW
from worker.sync.target_writes import Direct, Queued

DIRECTION = Direction.FORWARD


def record_stale_event(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                       link: Link, target: Direct | Queued) -> str:
    """An event older than the newest one the link has applied: nothing in it is news, but it
    may carry a Bitbucket edit our later write replaced (a conflict) or our own earlier
    writes (echoes). Returns "echo" or "stale", for the delivery's log line."""
    record_overwritten(session, conn, delivery, event, link, target)
    if record_late_echoes(session, conn, delivery, event, link):
        return "echo"
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.STALE,
                  link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                  bitbucket_at=event.issue.updated_at,
                  detail=f"event from {event.issue.updated_at.isoformat()} is older than "
                         f"the {link.bitbucket_updated_at.isoformat()} already applied")
    return "stale"


def record_overwritten(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                 link: Link, target: Direct | Queued, only: str | None = None) -> set[str]:
    """A stale event carrying a Bitbucket edit that our later write replaced: both sides changed
    the field, so it is a conflict, decided now that the event tells us when Bitbucket's edit
    happened. If Bitbucket should have won, its value goes to the ticket and back to Bitbucket."""
    rows = [r for r in session.scalars(select(OutboxEntry).where(
        OutboxEntry.link_id == link.id, to_bitbucket(OutboxKind.FIELDS),
        OutboxEntry.state == OutboxState.SENT, OutboxEntry.created_at >= utcnow() - ECHO_WINDOW))
        if r.overwritten]
    tables = connections.tables_for(conn)
    handled: set[str] = set()
    for row in rows:
        for field, replaced in list(row.overwritten.items()):
            value = replaced["was"]
            if (only is not None and field != only) or event.issue.fields.get(field, MISSING) != value:
                continue
            handled.add(field)
            row.overwritten = {k: v for k, v in row.overwritten.items() if k != field} or None
            current = target.read(link)
            policy = connections.policy_for(conn, field)
            winner = pick_winner(policy, "bitbucket", event.issue.updated_at, row.created_at)
            shadow = session.get(Shadow, (link.id, field))
            entry = ledger.record(
                session, orm=winner is None,  # an open conflict names its entry
                connection_id=conn.id, direction=DIRECTION, outcome=Outcome.CONFLICT, field=field,
                link_id=link.id, delivery_id=delivery.id, actor=event.actor, policy=policy,
                winner=winner, bitbucket_value=value, target_value=current.fields.get(field),
                base_value=replaced["base"], bitbucket_at=event.issue.updated_at,
                target_at=row.created_at,
                detail="both sides changed; Bitbucket's edit was replaced by our write" +
                       {"source": ", and Bitbucket's value is restored", "dest": ", which stands",
                        None: "; awaiting a person"}[winner])
            if winner == Winner.SOURCE:
                mapped = tables.to_target(field, value) if field in tables.fields else value
                target.apply(conn, link, {field: mapped}, sources={field: value}, actor=event.actor)
                session.add(OutboxEntry(connection_id=conn.id, link_id=link.id, kind=OutboxKind.FIELDS,
                                           fields=[field], actor=event.actor))
            elif winner is None:
                session.flush()
                conflicts.open_conflict(session, connection_id=conn.id, link_id=link.id, field=field,
                                        base=ShadowPair(shadow.bitbucket_value, shadow.target_value) if shadow else None,
                                        bitbucket_value=value, target_value=current.fields.get(field),
                                        ledger_id=entry.id)
    return handled


def record_late_echoes(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                  link: Link) -> bool:
    """An older write of ours seen back after a newer one: an echo, and it must not touch the
    shadow (which already holds the newer write)."""
    writes = {r.id: r for r in links.in_flight(session, link)}
    found = late_echoes(event.issue.fields, links.expected(writes.values()))
    for outbox_id, field, value in found:
        links.seen(writes[outbox_id], field)
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.ECHO,
                      field=field, link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                      bitbucket_value=value, bitbucket_at=event.issue.updated_at,
                      detail=f"our own earlier write (outbox {outbox_id}) seen back after a newer one")
    return bool(found)
