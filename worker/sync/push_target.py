"""Forward writes to a remote target side (Zendesk), through the outbox: the same three steps
as the writes to Bitbucket (worker.sync.reverse), so no database lock is held across a call.

1. plan (one transaction): lock the link, claim its open `target` rows (worker.sync.claims);
   while one attempt holds them, another plans none (the holder goes on with what is pending);
2. send, in the rows' order: a create (keyed, so that a create whose answer was lost is found,
   not made twice), one write per run of field changes (later values win), each note;
3. finish (one transaction per step): give the link its item id, link the note, mark the rows
   sent with the values to expect back (the echo bookkeeping), write the ledger.
A crash between 2 and 3 leaves the claim to lapse (or to be taken over at once when its process
is known dead); the resumed attempt looks for what it may have written before writing again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db import ledger
from worker.db.models import CommentLink, Connection, Link, OutboxEntry, Shadow, utcnow
from worker.db.session import transaction
from worker.engine.states import OUTBOX_OPEN, Direction, OutboxKind, OutboxSide, OutboxState, Outcome
from worker.sync import claims, outbox
from worker.targets import side_for
from worker.targets.side import Side, SideError, Unavailable, VersionConflict

log = logging.getLogger("bbsync.sync")

DIRECTION = Direction.FORWARD


@dataclass
class Step:
    kind: OutboxKind
    attempts: dict[int, int]     # outbox id -> this attempt's number (the claim's token)
    resume: bool                 # a previous attempt may have made this write
    values: dict = field(default_factory=dict)
    note_id: str | None = None   # for a note: the Bitbucket comment it copies
    actor: str | None = None


@dataclass
class TargetPlan:
    connection_id: int
    target: str
    link_id: int
    item_id: str | None
    steps: list[Step]


def plan(session: Session, link_id: int) -> TargetPlan | None:
    link = session.scalar(select(Link).where(Link.id == link_id).with_for_update(key_share=True))
    if link is None:
        return None
    rows = list(session.scalars(select(OutboxEntry).where(
        OutboxEntry.link_id == link.id, OutboxEntry.side == OutboxSide.TARGET,
        OutboxEntry.state.in_(OUTBOX_OPEN)).order_by(OutboxEntry.id)))
    now = utcnow()
    if not rows or outbox.held(rows, now):
        return None
    conn = session.get(Connection, link.connection_id)
    claimed_until, holder = claims.until(now), claims.holder()
    steps: list[Step] = []
    for r in rows:
        resume = r.state == OutboxState.SENDING
        r.state, r.attempts, r.claimed_until, r.claimed_by = OutboxState.SENDING, r.attempts + 1, claimed_until, holder
        last = steps[-1] if steps else None
        if r.kind == OutboxKind.FIELDS and last is not None and last.kind == OutboxKind.FIELDS:
            last.values.update({f: v["target"] for f, v in r.sent_values.items()})
            last.attempts[r.id], last.resume, last.actor = r.attempts, last.resume or resume, r.actor
            continue
        values = ({f: v["target"] for f, v in r.sent_values.items()} if r.kind == OutboxKind.FIELDS
                  else dict(r.sent_values))
        steps.append(Step(OutboxKind(r.kind), {r.id: r.attempts}, resume, values, r.note_id, r.actor))
    return TargetPlan(conn.id, conn.target, link.id, link.target_id, steps)


def send(side: Side, step: Step, item_id: str | None, linked_notes: set[str]) -> str | None:
    """Make one step's write. Returns the new item's or note's id."""
    if step.kind == OutboxKind.CREATE:
        found = side.find(step.values["key"]) if step.resume else None
        return found or side.create(step.values["fields"], step.values.get("reporter"), key=step.values["key"])
    if step.kind == OutboxKind.FIELDS:
        side.apply(item_id, step.values)
        return None
    body = step.values["body"]
    if step.resume:  # posted by an attempt that died before recording it?
        for note in side.list_comments(item_id):
            if note.internal and note.body == body and note.id not in linked_notes:
                return note.id
    return side.add_comment(item_id, body, internal=True, author=step.values.get("author"))


def finish(session: Session, target_plan: TargetPlan, step: Step, result: str | None) -> str | None:
    """Record a step's write. Returns the link's item id as it now stands."""
    link = session.scalar(select(Link).where(Link.id == target_plan.link_id).with_for_update(key_share=True))
    rows = [r for r in session.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(list(step.attempts))))
            if r.state == OutboxState.SENDING and r.attempts == step.attempts[r.id]]
    if not rows or link is None:
        return link.target_id if link else None  # taken over by another attempt meanwhile
    where = f"{target_plan.target} item"
    if step.kind == OutboxKind.CREATE:
        link.target_id = link.target_id or result
        detail = f"created {where} {link.target_id} (outbox {rows[0].id})"
    elif step.kind == OutboxKind.FIELDS:
        now = utcnow()
        for shadow in session.scalars(select(Shadow).where(Shadow.link_id == link.id,
                                                           Shadow.field.in_(list(step.values)))):
            shadow.target_at = now
        rows[-1].unechoed = dict(step.values)  # what the side's own webhook will show back
        detail = f"wrote {', '.join(step.values)} to {where} {link.target_id}"
    else:
        if session.scalar(select(CommentLink.id).where(CommentLink.link_id == link.id,
                                                       CommentLink.target_comment_id == result)) is None:
            session.add(CommentLink(link_id=link.id, bitbucket_comment_id=int(step.note_id),
                                    target_comment_id=result))
        detail = f"internal note {result} on {where} {link.target_id} from Bitbucket comment {step.note_id}"
    for r in rows:
        r.state, r.sent_at, r.error, r.claimed_until, r.claimed_by = OutboxState.SENT, utcnow(), None, None, None
    ledger.record(session, connection_id=target_plan.connection_id, direction=DIRECTION,
                  outcome=Outcome.APPLIED, field="comment" if step.kind == OutboxKind.COMMENT else None,
                  link_id=link.id, actor=step.actor, new_value=result, detail=detail)
    return link.target_id


def fail(session: Session, target_plan: TargetPlan, step: Step, reason: str) -> None:
    """A write the side refused for good (a closed item, a value it rejects): the rows stay
    failed for a person to see and replay, and the ledger says why."""
    for r in session.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(list(step.attempts)))):
        if r.state == OutboxState.SENDING and r.attempts == step.attempts[r.id]:
            r.state, r.error, r.claimed_until, r.claimed_by = OutboxState.FAILED, reason[:2000], None, None
    ledger.record(session, connection_id=target_plan.connection_id, direction=DIRECTION,
                  outcome=Outcome.FAILED, link_id=target_plan.link_id, actor=step.actor,
                  detail=f"{target_plan.target}: {step.kind} not written: {reason}"[:2000])


def push(link_id: int) -> list[str]:
    """Send a link's open writes to its remote target side; retryable side errors propagate
    (after the claims are given back), refusals are recorded and the next write goes on."""
    done: list[str] = []
    while True:
        with transaction() as session:
            target_plan = plan(session, link_id)
            side = side_for(session, target_plan.target) if target_plan else None
            linked = set(session.scalars(select(CommentLink.target_comment_id).where(
                CommentLink.link_id == link_id))) if target_plan else set()
        if target_plan is None:
            return done
        item_id = target_plan.item_id
        for index, step in enumerate(target_plan.steps):
            later = {i: n for s in target_plan.steps[index + 1:] for i, n in s.attempts.items()}
            try:
                if step.kind != OutboxKind.CREATE and item_id is None:
                    raise LookupError("the item was never created (its create failed)")
                result = send(side, step, item_id, linked)
            except (Unavailable, VersionConflict) as exc:
                _give_back({**step.attempts, **later}, written=set(step.attempts), reason=str(exc))
                raise
            except (SideError, LookupError) as exc:
                with transaction() as session:
                    fail(session, target_plan, step, f"{exc.__class__.__name__}: {exc}")
                log.warning("sync.target_write_failed link=%s kind=%s error=%s", link_id, step.kind,
                            exc.__class__.__name__)
                continue
            except BaseException:
                _give_back({**step.attempts, **later}, written=set(step.attempts))
                raise
            with transaction() as session:
                item_id = finish(session, target_plan, step, result)
            done.append(f"{step.kind} written to {target_plan.target}")


def _give_back(claimed: dict[int, int], written: set[int], reason: str | None = None) -> None:
    with transaction() as session:
        outbox.release(session, claimed, written)
        if reason:
            for r in session.scalars(select(OutboxEntry).where(OutboxEntry.id.in_(list(written)))):
                r.error = reason[:2000]
