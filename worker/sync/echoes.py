"""Our own writes to Bitbucket seen back (echoes), and the Bitbucket edits they replaced.

The forward runner (worker.sync.forward) asks worker.engine.judge what an incoming value is;
this module loads what the judgement needs (the writes whose webhooks may still be on their
way) and records what it decided: an echo moves the shadow and changes nothing else (promise
4); a Bitbucket edit that our later write replaced is a conflict, decided now that its webhook
says when it happened.
"""
from __future__ import annotations

from functools import lru_cache

from sqlalchemy import bindparam, exists, literal, select
from sqlalchemy.orm import Session

from worker import connections

from worker.db import ledger
from worker.db.models import CommentLink, Connection, Delivery, Link, OutboxEntry, Shadow, utcnow
from worker.engine.events import MISSING, IssueEvent
from worker.engine.judge import Expected, Verdict, late_echoes
from worker.engine.merge import ShadowPair, pick_winner
from worker.engine.states import OUTBOX_OPEN, Direction, OutboxKind, OutboxState, Outcome, Winner
from worker.sync import conflicts
from worker.sync.outbox import to_bitbucket
from worker.sync.reverse import ECHO_WINDOW
from worker.sync.target_writes import Direct, Queued

DIRECTION = Direction.FORWARD


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
    writes = {r.id: r for r in in_flight(session, link)}
    found = late_echoes(event.issue.fields, expected(writes.values()))
    for outbox_id, field, value in found:
        _seen(writes[outbox_id], field)
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.ECHO,
                      field=field, link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                      bitbucket_value=value, bitbucket_at=event.issue.updated_at,
                      detail=f"our own earlier write (outbox {outbox_id}) seen back after a newer one")
    return bool(found)


def expected(rows) -> list[Expected]:
    return [Expected(r.id, dict(r.unechoed or {}),
                     {f: (v or {}).get("target") for f, v in (r.sent_values or {}).items()}) for r in rows]


def _seen(row: OutboxEntry, field: str) -> None:
    """The write's value for this field came back: no longer expected."""
    row.unechoed = {k: v for k, v in (row.unechoed or {}).items() if k != field} or None


def lock_link(session: Session, connection_id: int, repo: str, issue_id: int,
              comment_id: int | None = None) -> tuple[Link | None, dict]:
    """The issue's link, locked FOR NO KEY UPDATE (one event per link at a time, across any
    number of workers, without blocking the inserts that merely reference it: ledger, outbox,
    comment links), with its shadows by field, in one statement. It also tells whether any
    write of ours to the issue is recent enough for its echo to be on the way: as a rule none
    is, and `in_flight` then answers without a query. With `comment_id`, whether that comment
    is copied already (for worker.sync.forward_comments, also without a query of its own)."""
    rows = session.execute(_lock_link_statement(comment_id is not None), {
        "connection_id": connection_id, "repo": repo, "issue_id": issue_id, "comment_id": comment_id,
        "since": utcnow() - ECHO_WINDOW}).all()
    if not rows:
        return None, {}
    link = rows[0][0]
    if not rows[0][2]:
        session.info.setdefault("no_writes_in_flight", set()).add(link.id)
    if comment_id is not None:
        session.info.setdefault("comments_copied", {})[(link.id, comment_id)] = bool(rows[0][3])
    return link, {row[1].field: row[1] for row in rows if row[1] is not None}


@lru_cache(maxsize=2)
def _lock_link_statement(with_comment: bool):
    """Built once: a statement's construction and cache key cost more than its round trip."""
    recent = exists().where(OutboxEntry.link_id == Link.id, to_bitbucket(OutboxKind.FIELDS),
                            OutboxEntry.state.in_((OutboxState.SENDING, OutboxState.SENT)),
                            OutboxEntry.created_at >= bindparam("since")).correlate(Link)
    copied = (exists().where(CommentLink.link_id == Link.id,
                             CommentLink.bitbucket_comment_id == bindparam("comment_id"))
              .correlate(Link) if with_comment else literal(False))
    return (select(Link, Shadow, recent, copied).outerjoin(Shadow, Shadow.link_id == Link.id)
            .where(Link.connection_id == bindparam("connection_id"), Link.bitbucket_repo == bindparam("repo"),
                   Link.bitbucket_issue_id == bindparam("issue_id"))
            .with_for_update(of=Link.__table__, key_share=True))


def in_flight(session: Session, link: Link) -> list[OutboxEntry]:
    """Our own writes to this issue whose webhooks may still be on their way back."""
    if link.id in session.info.get("no_writes_in_flight", ()):
        return []
    return [r for r in session.scalars(select(OutboxEntry).where(
        OutboxEntry.link_id == link.id, to_bitbucket(OutboxKind.FIELDS),
        OutboxEntry.state.in_((OutboxState.SENDING, OutboxState.SENT)),
        OutboxEntry.created_at >= utcnow() - ECHO_WINDOW)) if r.unechoed]


def record_echo(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent, link: Link,
                 field: str, incoming, verdict: Verdict, writes: dict[int, OutboxEntry],
                 shadow: Shadow | None) -> None:
    """A value we wrote, seen back: recorded as an echo, and nothing else happens (promise 4).
    Both sides agree on what we wrote and the helpdesk value it was written from, not on
    whatever the ticket says now (it may have moved on since)."""
    _seen(writes[verdict.outbox_id], field)
    if verdict.move_shadow:
        if shadow is None:
            shadow = Shadow(link_id=link.id, field=field)
            session.add(shadow)
        shadow.bitbucket_value, shadow.target_value = incoming, verdict.written_from
        shadow.bitbucket_at = event.issue.updated_at
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.ECHO,
                  field=field, link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                  bitbucket_value=incoming, target_value=verdict.written_from,
                  bitbucket_at=event.issue.updated_at,
                  detail=f"our own write (outbox {verdict.outbox_id}) seen back")
    if verdict.ticket_moved and not _queued(session, link, field):
        # The ticket moved on after the write and nothing will carry its value out: the write
        # was never recorded (a crash before finish), so no follow-up push was queued, and
        # meanwhile an older Bitbucket snapshot changed the ticket.
        session.add(OutboxEntry(connection_id=conn.id, link_id=link.id, kind=OutboxKind.FIELDS,
                                   fields=[field], actor=event.actor))


def _queued(session: Session, link: Link, field: str) -> bool:
    """Whether a push not yet finished will send this field's current value anyway."""
    return any(field in (r.fields or []) for r in session.scalars(select(OutboxEntry).where(
        OutboxEntry.link_id == link.id, to_bitbucket(OutboxKind.FIELDS),
        OutboxEntry.state.in_(OUTBOX_OPEN))))


