"""Reverse sync: local helpdesk edits -> Bitbucket, through the outbox (comments: in
worker.sync.reverse_comments, on the same outbox and claims).

Each push is three steps, so that no database lock is held across a remote call:
1. plan (one transaction): lock the link, decide each changed field against the shadow, and
   mark the outbox rows `sending` with the values about to be written, committed before the
   call, so the webhook Bitbucket fires back is recognised as our echo whenever it arrives;
   the rows are claimed by this attempt (worker.sync.claims);
2. send: ONE Bitbucket write for all field changes of the issue (POST .../changes, which
   records a change on Bitbucket's side);
3. finish (one transaction): move the shadows, mark the rows sent, write the ledger.
While one attempt holds a link's field rows or comment rows, another plans none of that kind
for the link (the holder goes on with what is pending when it finishes), so two writes of one
issue never cross and comments keep their order. A crash between 2 and 3 leaves the claim to
lapse; the next attempt re-plans the same values (the second write changes nothing) or, for
a comment, finds it by its marker instead of posting it again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import connections

from worker.db import ledger
from worker.db.models import Conflict, Connection, Link, OutboxEntry, Shadow, utcnow
from worker.engine.events import LIMITS, parse_time
from worker.engine.decide import parked
from worker.engine.decide import ShadowPair, decide_field
from worker.engine.states import OUTBOX_OPEN, ConflictState, Direction, OutboxKind, OutboxSide, OutboxState, Outcome
from worker.engine.text import clean
from worker.sync import claims, outbox
from worker.targets import side_for

log = logging.getLogger("bbsync.sync")

DIRECTION = Direction.REVERSE
#: Ticket fields pushed to Bitbucket, and the key each has in Bitbucket's change API. The
#: assignee is not pushed: a helpdesk display name does not identify a Bitbucket account.
BITBUCKET_KEYS = {"title": "title", "description": "content", "status": "state",
                  "priority": "priority", "type": "kind"}
#: How long a sent value waits to be seen again as an echo before we stop expecting it.
ECHO_WINDOW = timedelta(hours=1)


@dataclass
class FieldPush:
    field: str
    target_value: str | None
    bitbucket_value: str | None
    base: ShadowPair | None


@dataclass
class PushPlan:
    connection_id: int
    connection: str
    link_id: int
    repo: str
    issue_id: int
    outbox_ids: list[int]
    fields: list[FieldPush] = field(default_factory=list)
    actor: str | None = None
    attempts: dict[int, int] = field(default_factory=dict)  # outbox id -> this attempt's number
    target: str = "local"  # the connection's target side

    def change_body(self) -> dict[str, dict[str, str | None]]:
        return {BITBUCKET_KEYS[f.field]: {"new": f.bitbucket_value} for f in self.fields}


def record_ticket_edit(session: Session, ticket_id: int, changed: list[str], actor: str | None) -> list[int]:
    """Queue a local edit for every link of the ticket (called in the edit's transaction).
    Returns the link ids to push."""
    pushed = [f for f in changed if f in BITBUCKET_KEYS]
    if not pushed:
        return []
    links = list(session.scalars(select(Link).where(Link.target_id == str(ticket_id))))
    for link in links:
        session.add(OutboxEntry(connection_id=link.connection_id, link_id=link.id, kind=OutboxKind.FIELDS,
                                   fields=pushed, actor=actor))
    return [link.id for link in links]


def plan_fields(session: Session, link_id: int) -> PushPlan | None:
    link = session.scalar(select(Link).where(Link.id == link_id).with_for_update(key_share=True))
    if link is None:
        return None
    conn = session.get(Connection, link.connection_id)
    rows = list(session.scalars(select(OutboxEntry).where(
        OutboxEntry.link_id == link.id, outbox.to_bitbucket(OutboxKind.FIELDS),
        OutboxEntry.state.in_(OUTBOX_OPEN)).order_by(OutboxEntry.id)))
    if not rows or link.target_id is None:  # (the target item is still being created)
        return None
    if conn.tracker_removed_at is not None:
        give_up(session, conn, link, rows, "the repository's issue tracker was removed (410)")
        return None
    now = utcnow()
    if outbox.held(rows, now):
        return None

    tables = connections.tables_for(conn)
    ticket = side_for(session, conn.target).read(link.target_id)
    shadows = {s.field: s for s in session.scalars(select(Shadow).where(Shadow.link_id == link.id))}
    plan = PushPlan(conn.id, conn.name, link.id, link.bitbucket_repo, link.bitbucket_issue_id,
                    [r.id for r in rows], actor=rows[-1].actor, target=conn.target)
    wanted = dict.fromkeys(f for r in rows for f in (r.fields or []) if f in BITBUCKET_KEYS)
    to_push, waiting = parked(wanted, session.scalars(select(Conflict.field).where(
        Conflict.link_id == link.id, Conflict.state == ConflictState.OPEN)))
    for name in waiting:
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.NOOP,
                      field=name, link_id=link.id, actor=plan.actor,
                      detail="not pushed: an open conflict on this field awaits a person")
    for name in to_push:
        row = shadows.get(name)
        base = ShadowPair(row.target_value, row.bitbucket_value) if row else None
        to_dest, to_source = tables.translators(name, "target")
        # What Bitbucket holds, as far as we know: the last value both sides agreed on. Reading
        # it back would cost a call per push; a concurrent Bitbucket edit still reaches us as a
        # webhook and is decided there (it is older than our write, so it is recorded stale).
        believed = row.bitbucket_value if row else None
        d = decide_field(name, ticket.fields.get(name), believed, base, to_dest=to_dest,
                         to_source=to_source, policy=connections.policy_for(conn, name),
                         source_name="target")
        if d is None:
            continue
        if d.outcome == Outcome.UNMAPPED:
            ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.UNMAPPED,
                          field=name, link_id=link.id, actor=plan.actor, target_value=d.source_value,
                          detail=d.detail)
        elif d.write:
            plan.fields.append(FieldPush(name, d.source_value, d.new_dest, base))
        else:  # equivalent already (a lossy map): nothing to write, but the base moves
            _set_shadow(session, link.id, name, shadows.get(name), d.dest_value, d.source_value)
            ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.NOOP,
                          field=name, link_id=link.id, actor=plan.actor, target_value=d.source_value,
                          bitbucket_value=d.dest_value, old_value=d.dest_value, new_value=d.dest_value,
                          detail=f"{d.source_value!r} already corresponds to Bitbucket's {d.dest_value!r}")
    if not plan.fields:
        for r in rows:
            r.state, r.sent_at = OutboxState.SENT, utcnow()
        return None
    sent = {f.field: f.bitbucket_value for f in plan.fields}
    # What we write, and the helpdesk value it was written from: the pair an echo agrees on.
    pairs = {f.field: {"bitbucket": f.bitbucket_value, "target": f.target_value} for f in plan.fields}
    # One write, one set of values to expect back: on the newest row only. Older writes of the
    # same fields are superseded: their echoes, if still on the way, are stale by then.
    for older in session.scalars(select(OutboxEntry).where(
            OutboxEntry.link_id == link.id, OutboxEntry.side == OutboxSide.BITBUCKET,
            OutboxEntry.state == OutboxState.SENT, OutboxEntry.unechoed.is_not(None))):
        left = {k: v for k, v in (older.unechoed or {}).items() if k not in sent}
        if left != older.unechoed:
            older.unechoed = left or None
    claimed_until, holder = claims.until(now), claims.holder()
    for r in rows:
        r.state, r.attempts, r.sent_values = OutboxState.SENDING, r.attempts + 1, pairs
        r.claimed_until, r.claimed_by = claimed_until, holder
        r.unechoed = dict(sent) if r is rows[-1] else None
        plan.attempts[r.id] = r.attempts
    return plan


def finish_fields(session: Session, plan: PushPlan, result: dict | None) -> bool:
    """Record a completed write. Returns True if the ticket moved on meanwhile and another
    push is queued."""
    link = session.scalar(select(Link).where(Link.id == plan.link_id).with_for_update(key_share=True))
    if link is None:
        return False
    result = result or {}
    written_at = parse_time(result.get("created_on")) or utcnow()
    before = {key: (change or {}).get("old") for key, change in (result.get("changes") or {}).items()}
    shadows = {s.field: s for s in session.scalars(select(Shadow).where(Shadow.link_id == link.id))}
    overwritten: dict[str, dict] = {}
    for f in plan.fields:
        believed = f.base.dest if f.base else None
        old = before.get(BITBUCKET_KEYS[f.field])
        if isinstance(old, str):  # Bitbucket's text, compared with and stored beside cleaned text
            old = clean(f.field, old, LIMITS[f.field])[0]
        if old and old not in (believed, f.bitbucket_value):
            # Bitbucket changed it concurrently; its webhook decides (forward._overwritten).
            overwritten[f.field] = {"was": old, "base": believed}
        _set_shadow(session, link.id, f.field, shadows.get(f.field), f.bitbucket_value, f.target_value,
                    bitbucket_at=written_at)
        ledger.record(session, connection_id=plan.connection_id, direction=DIRECTION, outcome=Outcome.APPLIED,
                      field=f.field, link_id=link.id, actor=plan.actor,
                      base_value=f.base.dest if f.base else None,
                      old_value=old if old is not None else believed, new_value=f.bitbucket_value,
                      target_value=f.target_value, bitbucket_value=f.bitbucket_value,
                      bitbucket_at=written_at,
                      detail=f"replaced Bitbucket's concurrent {old!r}" if f.field in overwritten else None)
    # The written fields' shadows carry the write's time, so an older snapshot cannot undo
    # them (forward checks per field). The link's own watermark is left alone: it says which
    # Bitbucket snapshot we last read whole, and our write told us nothing of the other fields.
    for r in session.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(plan.outbox_ids))):
        if r.state == OutboxState.SENDING and r.attempts == plan.attempts.get(r.id):
            r.state, r.sent_at, r.error = OutboxState.SENT, utcnow(), None
            r.claimed_until = r.claimed_by = None
            r.overwritten = overwritten or None
    # The ticket may have changed while the write was in flight (an agent, or a forward
    # decision): whatever now differs from what we wrote goes out in another push, and so do
    # edits that other pushes left to us while we held the link's fields.
    current = side_for(session, plan.target).read(link.target_id).fields
    moved = [f.field for f in plan.fields if current.get(f.field) != f.target_value]
    if moved:
        session.add(OutboxEntry(connection_id=plan.connection_id, link_id=link.id, kind=OutboxKind.FIELDS,
                                   fields=moved, actor=plan.actor))
    return session.scalar(select(OutboxEntry.id).where(
        OutboxEntry.link_id == link.id, outbox.to_bitbucket(OutboxKind.FIELDS),
        OutboxEntry.state == OutboxState.PENDING).limit(1)) is not None


def _set_shadow(session: Session, link_id: int, name: str, row: Shadow | None, bitbucket_value,
                target_value, bitbucket_at: datetime | None = None) -> None:
    if row is None:
        row = Shadow(link_id=link_id, field=name)
        session.add(row)
    row.bitbucket_value, row.target_value, row.target_at = bitbucket_value, target_value, utcnow()
    if bitbucket_at is not None:
        row.bitbucket_at = bitbucket_at


def give_up(session: Session, conn: Connection, link: Link, rows: list[OutboxEntry], reason: str) -> None:
    for r in rows:
        r.state, r.error = OutboxState.FAILED, reason
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.FAILED,
                  link_id=link.id, detail=reason)


def fail(session: Session, link_id: int, outbox_ids: list[int], reason: str, *, permanent: bool) -> None:
    """Record a failed push; permanent failures stop retrying (the rows stay for a replay). The
    claim is given back: the write may have reached Bitbucket, so the rows stay `sending` and
    the next attempt resumes them (it looks for the marker first)."""
    rows = list(session.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(outbox_ids))))
    for r in rows:
        r.error, r.claimed_until, r.claimed_by = reason[:2000], None, None
        if permanent:
            r.state = OutboxState.FAILED
    if permanent and rows:
        ledger.record(session, connection_id=rows[0].connection_id, direction=DIRECTION,
                      outcome=Outcome.FAILED, link_id=link_id, detail=reason[:2000])


def mark_tracker_removed(session: Session, connection_id: int) -> None:
    conn = session.get(Connection, connection_id)
    if conn is not None and conn.tracker_removed_at is None:
        conn.tracker_removed_at = utcnow()
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.FAILED,
                      detail="Bitbucket answered 410 Gone: the issue tracker was removed. Sync to "
                             "Bitbucket stops for this connection; all data held here is kept.")
