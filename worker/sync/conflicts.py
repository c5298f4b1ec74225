"""Conflicts left for a person (policy `manual`): listing and resolving them."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import connections

from worker.db import ledger
from worker.db.models import Conflict, Connection, Link, OutboxEntry, Shadow, utcnow
from worker.engine.states import ConflictState, Direction, OutboxKind, Outcome, Policy
from worker.sync.target_writes import writer_for

TAKES = ("bitbucket", "target", "value")


class ResolutionError(ValueError):
    pass


def open_conflict(session: Session, *, connection_id: int, link_id: int, field: str, base,
                  bitbucket_value, target_value, ledger_id: int | None) -> Conflict:
    row = Conflict(connection_id=connection_id, link_id=link_id, field=field, ledger_id=ledger_id,
                   base_bitbucket=base.source if base else None, base_target=base.dest if base else None,
                   bitbucket_value=bitbucket_value, target_value=target_value, state=ConflictState.OPEN)
    session.add(row)
    return row


def as_dict(c: Conflict, link: Link | None = None) -> dict:
    return {
        "id": c.id, "field": c.field, "state": c.state, "link": c.link_id,
        "bitbucket": {"repo": link.bitbucket_repo, "issue_id": link.bitbucket_issue_id} if link else None,
        "ticket": int(link.target_id) if link else None,
        "base": {"bitbucket": c.base_bitbucket, "target": c.base_target},
        "bitbucket_value": c.bitbucket_value, "target_value": c.target_value,
        "resolution": c.resolution, "resolved_value": c.resolved_value, "resolved_by": c.resolved_by,
        "created_at": c.created_at.isoformat(),
        "resolved_at": c.resolved_at.isoformat() if c.resolved_at else None,
    }


def listing(session: Session, connection_id: int, state: str | None) -> list[tuple[Conflict, Link]]:
    query = select(Conflict, Link).join(Link, Link.id == Conflict.link_id).where(
        Conflict.connection_id == connection_id)
    if state:
        query = query.where(Conflict.state == state)
    return list(session.execute(query.order_by(Conflict.id.desc())).all())


def resolve(session: Session, conflict_id: int, take: str, value: str | None, who: str | None) -> int | None:
    """Apply a person's choice. The helpdesk side is written here; a Bitbucket write is queued
    in the outbox. Returns the link id to push, or None when Bitbucket needs nothing."""
    if take not in TAKES:
        raise ResolutionError(f"take must be one of {', '.join(TAKES)}")
    c = session.scalar(select(Conflict).where(Conflict.id == conflict_id).with_for_update())
    if c is None:
        raise LookupError(f"conflict {conflict_id} does not exist")
    if c.state != ConflictState.OPEN:
        raise ResolutionError(f"conflict {conflict_id} is already {c.state}")
    link = session.scalar(select(Link).where(Link.id == c.link_id).with_for_update(key_share=True))
    conn = session.get(Connection, c.connection_id)
    writes = writer_for(session, conn)
    helpdesk = writes.side
    tables = connections.tables_for(conn)
    mapped = c.field in tables.fields

    if take == "bitbucket":
        target_value = tables.to_target(c.field, c.bitbucket_value) if mapped else c.bitbucket_value
    elif take == "target":
        target_value = c.target_value
    else:
        if value is None:
            raise ResolutionError("take=value needs a value")
        accepted = helpdesk.vocabulary.get(c.field, ())
        if mapped and value not in accepted:
            raise ResolutionError(f"{value!r} is not a helpdesk {c.field} "
                                  f"(one of {', '.join(accepted)})")
        target_value = value

    if writes.read(link).fields.get(c.field) != target_value:
        writes.apply(conn, link, {c.field: target_value}, sources={c.field: c.bitbucket_value}, actor=who)
    # The base becomes "both sides at Bitbucket's current value": the push then writes exactly
    # the difference, if the chosen value is not already what Bitbucket holds.
    shadow = session.get(Shadow, (link.id, c.field)) or Shadow(link_id=link.id, field=c.field)
    session.add(shadow)
    shadow.bitbucket_value = c.bitbucket_value
    shadow.target_value = tables.to_target(c.field, c.bitbucket_value) if mapped else c.bitbucket_value
    push = shadow.target_value != target_value
    if push:
        session.add(OutboxEntry(connection_id=conn.id, link_id=link.id, kind=OutboxKind.FIELDS,
                                   fields=[c.field], actor=who))
    c.state, c.resolution, c.resolved_value = ConflictState.RESOLVED, take, target_value
    c.resolved_by, c.resolved_at = who, utcnow()
    ledger.record(session, connection_id=conn.id, direction=Direction.REVERSE if push else Direction.FORWARD,
                  outcome=Outcome.CONFLICT, field=c.field, link_id=link.id, actor=who, policy=Policy.MANUAL,
                  winner=take, base_value=c.base_bitbucket, bitbucket_value=c.bitbucket_value,
                  target_value=c.target_value, new_value=target_value,
                  detail=f"conflict {c.id} resolved by {who or 'an operator'}: took {take}")
    return link.id if push else None
