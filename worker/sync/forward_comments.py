"""Bitbucket comments -> notes on the target side, once each; our own posts seen back are
echoes (their marker names the helpdesk comment they were written from)."""
from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db import ledger
from worker.db.models import CommentLink, Connection, Delivery, Link
from worker.engine.events import IssueEvent
from worker.engine.comments import CommentKind, judge_comment
from worker.engine.states import Direction, Outcome
from worker.sync.target_writes import Direct, Queued

DIRECTION = Direction.FORWARD


def sync_comment(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                  link: Link, target: Direct | Queued) -> None:
    """A Bitbucket comment becomes an internal note on the ticket, once."""
    comment = event.comment
    if comment is None:
        return
    copied = session.info.get("comments_copied", {}).get((link.id, comment.id))  # links.lock_link knew
    if copied is None:
        copied = session.scalar(select(CommentLink.id).where(
            CommentLink.link_id == link.id, CommentLink.bitbucket_comment_id == comment.id)) is not None
    kind, ours = judge_comment(comment.body, conn.name,
                               already_copied=copied or target.note_queued(link, comment.id))
    if kind is CommentKind.OURS:
        # A helpdesk comment we posted, seen back. If our own commit has not happened yet (or
        # never will, after a crash), the marker is enough to link it: never a second note.
        linked = session.scalar(select(CommentLink.id).where(
            CommentLink.link_id == link.id, CommentLink.target_comment_id == str(ours)))
        if not copied and linked is None and target.side.get_comment(str(ours)) is not None:
            session.add(CommentLink(link_id=link.id, bitbucket_comment_id=comment.id,
                                    target_comment_id=str(ours)))
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.ECHO,
                      field="comment", link_id=link.id, delivery_id=delivery.id, actor=comment.author,
                      bitbucket_value=str(comment.id), detail=f"our own post of helpdesk comment {ours}")
        return
    if kind is CommentKind.KNOWN:
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.NOOP,
                      field="comment", link_id=link.id, delivery_id=delivery.id, actor=comment.author,
                      bitbucket_value=str(comment.id), detail="comment already synced")
        return
    note_id = target.add_note(conn, link, comment.id, comment.body, comment.author)
    if note_id is not None:  # written now; a queued note is linked when it is sent
        session.add(CommentLink(link_id=link.id, bitbucket_comment_id=comment.id, target_comment_id=note_id))
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.APPLIED,
                  field="comment", link_id=link.id, delivery_id=delivery.id, actor=comment.author,
                  bitbucket_value=str(comment.id), new_value=excerpt(comment.body),
                  detail=f"internal note {note_id} from Bitbucket comment {comment.id}" if note_id else
                         f"internal note from Bitbucket comment {comment.id} queued for {conn.target}")


def excerpt(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
