"""One issue's Bitbucket comments compared with what we hold: edits and deletions, for which
Bitbucket sends no webhook, applied to the internal notes; new comments handed back, to go
through the engine as synthetic deliveries (`worker.sync.importer`).

Comment edits update the internal note made from the comment (helpdesk notes are not
editable locally, so the Bitbucket text is the only source of change). Comment deletions keep
the note (nothing we hold is thrown away), append a visible line saying it was deleted in
Bitbucket, record the deletion in the ledger and end the comment link (so it is recorded
once). For a comment we posted from the helpdesk, the helpdesk is the origin: an edit in
Bitbucket is not copied back, a deletion is recorded and the helpdesk comment is left as is.

Listing costs one call per 100 comments of the issue (Bitbucket has no listing that spans a
repository); which issues are listed, and when, is reconciliation's choice (its `comments=`).
"""
from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.db import ledger
from worker.bitbucket.errors import NotFound
from worker.db.models import CommentLink, Link, OutboxEntry, utcnow
from worker.db.session import transaction
from worker.engine.events import NAME_LIMIT, comment_body, display_name, parse_time
from worker.engine.markers import find_comment_marker
from worker.engine.states import OutboxKind, Outcome
from worker.engine.text import clean
from worker.sync import forward, forward_comments
from worker.sync.outbox import to_bitbucket
from worker.targets import side_for

if TYPE_CHECKING:
    from worker.sync.importer import SyncReport

log = logging.getLogger("bbsync.reconcile")

DELETED_NOTE = "\n\n*[Deleted in Bitbucket (comment {cid}); kept here for the record.]*"


class CommentScan:
    """Lists the comments of one issue at a time and brings the notes in line with them."""

    def __init__(self, connection_id: int, connection: str, client: Any, report: SyncReport,
                 pagelen: int, target: str = "local"):
        self.connection_id = connection_id
        self.connection = connection
        self.target = target  # the connection's target side, where the notes are
        self.client = client
        self.report = report
        self.pagelen = pagelen

    def scan(self, repo: str, issue_id: int) -> list[dict]:
        """List the issue's comments, apply the edits and deletions of those we hold, and
        return the comments we do not hold yet, oldest first, as their webhooks would have
        come (none when the issue is gone, or not linked: its delivery failed or is held, so
        there is nothing to compare with)."""
        started = utcnow()
        try:
            listed = list(self.client.iter_comments(repo, issue_id, pagelen=self.pagelen))
        except NotFound:
            self.report.api_calls += 1
            self.report.issues_missing += 1
            log.info("reconcile.issue_missing connection=%s repo=%s issue=%s", self.connection,
                     repo, issue_id)
            return []
        self.report.api_calls += _pages_for(len(listed), self.pagelen)
        self.report.comment_scans += 1
        present = {c.get("id") for c in listed}
        real = [c for c in listed if comment_body(c) is not None and _is_int(c.get("id"))]
        del listed
        with transaction() as session:
            link = session.scalar(select(Link).where(
                Link.connection_id == self.connection_id, Link.bitbucket_repo == repo,
                Link.bitbucket_issue_id == issue_id).with_for_update(key_share=True))
            if link is None:
                return []
            linked = {cl.bitbucket_comment_id: cl for cl in session.scalars(
                select(CommentLink).where(CommentLink.link_id == link.id))}
            for c in real:
                if c["id"] in linked:
                    self._edited(session, link, linked[c["id"]], c)
            for comment_id, cl in linked.items():
                # A comment linked after the listing started is not missing from it: only
                # links older than the listing can tell of a deletion.
                if comment_id not in present and cl.created_at < started:
                    self._deleted(session, link, cl)
            new = [c for c in real if c["id"] not in linked]
        return sorted(new, key=lambda c: (c.get("created_on") or "", c["id"]))

    def _edited(self, session: Session, link: Link, cl: CommentLink, comment: dict) -> None:
        # Cleaned as normalize cleans a comment (the note holds the cleaned text, so an
        # unchanged comment compares equal); what was changed goes in the ledger line.
        text, cleaned = clean("comment", comment_body(comment))
        if find_comment_marker(text, self.connection) is not None or _from_helpdesk(session, link, cl):
            return  # our post of a helpdesk comment: the helpdesk is its origin
        side = side_for(session, self.target)
        note = side.get_comment(cl.target_comment_id)
        if note is None or note.body == text:
            return
        old = note.body
        side.revise_comment(note.id, text)
        author = display_name(comment.get("user"))
        if author is not None:
            author = clean("comment author", author, NAME_LIMIT)[0] or None
        ledger.record(session, connection_id=self.connection_id, direction=forward.DIRECTION,
                      outcome=Outcome.APPLIED, field="comment", link_id=link.id,
                      actor=author, bitbucket_value=str(comment["id"]),
                      old_value=forward_comments.excerpt(old), new_value=forward_comments.excerpt(text),
                      bitbucket_at=parse_time(comment.get("updated_on")),
                      detail=f"Bitbucket comment {comment['id']} was edited; internal note "
                             f"{note.id} updated (Bitbucket sends no webhook for comment edits: "
                             f"found by reconciliation)"
                             + (f"; text cleaned before storing: {cleaned}" if cleaned else ""))
        self.report.comment_edits += 1

    def _deleted(self, session: Session, link: Link, cl: CommentLink) -> None:
        side = side_for(session, self.target)
        note = side.get_comment(cl.target_comment_id)
        ours = _from_helpdesk(session, link, cl)
        before = forward_comments.excerpt(note.body) if note is not None else None
        if ours:
            detail = (f"the Bitbucket copy (comment {cl.bitbucket_comment_id}) of helpdesk comment "
                      f"{cl.target_comment_id} was deleted in Bitbucket; the helpdesk comment is kept")
        else:
            if note is not None:
                side.revise_comment(note.id, note.body + DELETED_NOTE.format(cid=cl.bitbucket_comment_id))
            detail = (f"Bitbucket comment {cl.bitbucket_comment_id} was deleted in Bitbucket; internal "
                      f"note {cl.target_comment_id} is kept and marked as deleted (Bitbucket sends no "
                      f"webhook for comment deletions: found by reconciliation)")
        ledger.record(session, connection_id=self.connection_id, direction=forward.DIRECTION,
                      outcome=Outcome.NOOP if ours else Outcome.APPLIED, field="comment", link_id=link.id,
                      bitbucket_value=str(cl.bitbucket_comment_id),
                      old_value=before, detail=detail)
        # The pair no longer exists; ending it records the deletion once.
        session.delete(cl)
        self.report.comment_deletions += 1


def _from_helpdesk(session: Session, link: Link, cl: CommentLink) -> bool:
    return session.scalar(select(OutboxEntry.id).where(
        OutboxEntry.link_id == link.id, to_bitbucket(OutboxKind.COMMENT),
        OutboxEntry.note_id == cl.target_comment_id).limit(1)) is not None


def _pages_for(count: int, pagelen: int) -> int:
    return max(1, math.ceil(count / pagelen))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None
