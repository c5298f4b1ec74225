"""Reverse sync of comments: helpdesk replies -> Bitbucket comments, through the outbox.

The same three steps as the fields (worker.sync.reverse): plan and claim in one transaction,
post with no transaction open, finish in another. A comment is the write that must not happen
twice: only the attempt holding a row's claim posts it; a row whose claim lapsed (its holder
died, or gave it back after an error) is resumed by looking for its marker on the issue first.
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db import ledger
from worker.db.models import CommentLink, Connection, Link, OutboxEntry, utcnow
from worker.engine.markers import comment_marker
from worker.engine.states import OUTBOX_OPEN, OutboxKind, OutboxState, Outcome
from worker.sync import claims
from worker.sync.outbox import held, to_bitbucket
from worker.sync.reverse import DIRECTION, give_up
from worker.targets import side_for
from worker.targets.side import Comment

@dataclass
class CommentPush:
    connection_id: int
    connection: str
    link_id: int
    outbox_id: int
    repo: str
    issue_id: int
    note_id: str  # the helpdesk comment being copied
    body: str
    resume: bool  # a previous attempt may have posted it: look for our marker first
    attempt: int  # this attempt's number on the outbox row: the claim's token


def record_ticket_comment(session: Session, comment: Comment) -> list[int]:
    """Queue a helpdesk comment for Bitbucket. Internal notes stay local unless the
    connection explicitly says otherwise (privacy fails closed)."""
    links = list(session.scalars(select(Link).where(Link.target_id == comment.item_id)))
    queued = []
    for link in links:
        conn = session.get(Connection, link.connection_id)
        if comment.internal and not conn.push_internal_notes:
            ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.NOOP,
                          field="comment", link_id=link.id, actor=comment.author,
                          detail=f"internal note {comment.id} kept in the helpdesk")
            continue
        session.add(OutboxEntry(connection_id=conn.id, link_id=link.id, kind=OutboxKind.COMMENT,
                                note_id=comment.id, actor=comment.author))
        queued.append(link.id)
    return queued


def format_comment(connection: str, comment: Comment) -> str:
    who = comment.author or "Support"
    return f"{comment.body}\n\n*{who}, via the helpdesk*\n\n{comment_marker(connection, comment.id)}"


def plan_comments(session: Session, link_id: int) -> list[CommentPush]:
    link = session.scalar(select(Link).where(Link.id == link_id).with_for_update(key_share=True))
    if link is None:
        return []
    conn = session.get(Connection, link.connection_id)
    rows = list(session.scalars(select(OutboxEntry).where(
        OutboxEntry.link_id == link.id, to_bitbucket(OutboxKind.COMMENT),
        OutboxEntry.state.in_(OUTBOX_OPEN)).order_by(OutboxEntry.id)))
    if rows and conn.tracker_removed_at is not None:
        give_up(session, conn, link, rows, "the repository's issue tracker was removed (410)")
        return []
    now = utcnow()
    if held(rows, now):
        return []
    claimed_until, holder = claims.until(now), claims.holder()
    plans = []
    for r in rows:
        done = session.scalar(select(CommentLink.id).where(
            CommentLink.link_id == link.id, CommentLink.target_comment_id == r.note_id))
        if done is not None:
            r.state, r.sent_at = OutboxState.SENT, utcnow()
            continue
        comment = side_for(session, conn.target).get_comment(r.note_id)
        plans.append(CommentPush(conn.id, conn.name, link.id, r.id, link.bitbucket_repo,
                                 link.bitbucket_issue_id, comment.id, format_comment(conn.name, comment),
                                 resume=r.state == OutboxState.SENDING, attempt=r.attempts + 1))
        r.state, r.attempts = OutboxState.SENDING, r.attempts + 1
        r.claimed_until, r.claimed_by = claimed_until, holder
    return plans


def finish_comment(session: Session, push: CommentPush, bitbucket_comment: dict) -> None:
    exists = session.scalar(select(CommentLink.id).where(
        CommentLink.link_id == push.link_id, CommentLink.bitbucket_comment_id == bitbucket_comment["id"]))
    if exists is None:
        session.add(CommentLink(link_id=push.link_id, bitbucket_comment_id=bitbucket_comment["id"],
                                target_comment_id=push.note_id))
    row = session.get(OutboxEntry, push.outbox_id)
    if row.state == OutboxState.SENT:
        return  # an attempt that took over our lapsed claim found this post and recorded it
    row.state, row.sent_at, row.error = OutboxState.SENT, utcnow(), None
    row.claimed_until = row.claimed_by = None
    ledger.record(session, connection_id=push.connection_id, direction=DIRECTION, outcome=Outcome.APPLIED,
                  field="comment", link_id=push.link_id, actor=row.actor,
                  new_value=str(bitbucket_comment["id"]),
                  detail=f"helpdesk comment {push.note_id} posted as Bitbucket comment "
                         f"{bitbucket_comment['id']}")
