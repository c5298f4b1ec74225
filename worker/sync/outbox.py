"""The outbox's rows as a whole, whichever side they write to: which ones an attempt holds
(worker.sync.claims), which are waiting for nobody, and giving claims back.

Rows are written to Bitbucket by worker.sync.reverse and reverse_comments, to a remote target
side by worker.sync.push_target; both plan, send and finish under these claims.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import event, or_, select
from sqlalchemy.orm import Session

from worker.db.models import OutboxEntry, utcnow
from worker.engine.states import OUTBOX_OPEN, OutboxKind, OutboxSide, OutboxState
from worker.sync import claims


@event.listens_for(Session, "transient_to_pending")
def _note_added(session: Session, instance: object) -> None:
    if isinstance(instance, OutboxEntry):
        session.info.setdefault("outbox_links", set()).add(instance.link_id)


def added(session: Session) -> set[int]:
    """The links this session gave new outbox rows to: the pushes to queue once it commits
    (rows from before were queued by whoever added them, or are found by the sweeper)."""
    return session.info.get("outbox_links", set())


def to_bitbucket(kind: OutboxKind):
    """The condition for a link's outbox rows of this kind that write to Bitbucket."""
    return (OutboxEntry.side == OutboxSide.BITBUCKET) & (OutboxEntry.kind == kind)


def waiting_links(session: Session, created_before: datetime, connection_id: int | None = None) -> list[int]:
    """Links with outbox rows that no attempt holds, older than `created_before`: pushes that
    were lost (a broker outage) or whose holder died (its claim lapsed)."""
    query = select(OutboxEntry.link_id).where(_unheld(), OutboxEntry.created_at <= created_before)
    if connection_id is not None:
        query = query.where(OutboxEntry.connection_id == connection_id)
    return list(session.scalars(query.distinct().order_by(OutboxEntry.link_id)))


def unheld_rows(session: Session, link_id: int) -> list[int]:
    """A link's outbox rows still to write that no attempt is writing now."""
    return list(session.scalars(select(OutboxEntry.id).where(OutboxEntry.link_id == link_id, _unheld())))


def _unheld():
    return OutboxEntry.state.in_(OUTBOX_OPEN) & or_(
        OutboxEntry.claimed_until.is_(None), OutboxEntry.claimed_until <= utcnow())


def held(rows: list[OutboxEntry], now: datetime) -> bool:
    """Another attempt is writing rows of this kind for the link now: it pushes what is
    pending when it finishes, so this one leaves them all alone. A claim whose process is
    known to be dead holds nothing (the rows are resumed, marker first)."""
    return any(r.state == OutboxState.SENDING and claims.is_live(r.claimed_until, now)
               and not claims.holder_gone(r.claimed_by) for r in rows)


def release_dead_claims(session: Session) -> list[int]:
    """Give back the claims of processes of this host that died while writing (a killed
    worker), so that their rows are resumed now rather than when the claims lapse. Returns the
    links to push."""
    rows = [r for r in session.scalars(select(OutboxEntry).where(
        OutboxEntry.state == OutboxState.SENDING, OutboxEntry.claimed_until > utcnow()))
        if claims.holder_gone(r.claimed_by)]
    for r in rows:
        r.claimed_until, r.claimed_by = None, None
    return sorted({r.link_id for r in rows})


def release(session: Session, claimed: dict[int, int], written: set[int]) -> None:
    """Give back this attempt's claims (outbox id -> its attempt number) on rows it will not
    finish: those it may have written (`written`) stay `sending`, so the next attempt resumes
    them (looking for the marker first); the others wait as `pending`. A row another attempt
    took over meanwhile is left to it."""
    for r in session.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(list(claimed)))):
        if r.state == OutboxState.SENDING and r.attempts == claimed[r.id]:
            r.claimed_until = r.claimed_by = None
            if r.id not in written:
                r.state = OutboxState.PENDING
