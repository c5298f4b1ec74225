"""Running reverse pushes and escalations against Bitbucket: the I/O around worker.sync.reverse.

Database work happens in short transactions; the remote call happens between them, never
inside one, so a slow Bitbucket never holds a lock on our side.
"""
from __future__ import annotations

import logging

from worker.bitbucket.errors import RETRYABLE as REMOTE_RETRYABLE
from worker.bitbucket.errors import BitbucketError, TrackerRemoved
from worker.db.session import transaction
from worker.sync import reverse
from worker.sync.clients import client_for
from worker.sync.markers import comment_marker

log = logging.getLogger("bbsync.sync")


def push_link(link_id: int, client_factory=client_for) -> str:
    with transaction() as session:
        plan = reverse.plan_fields(session, link_id)
    outcome = "nothing to push"
    if plan is not None:
        client = client_factory(plan.connection_id)
        try:
            # Re-applying the same values changes nothing, so this write may be retried freely.
            result = client.post_change(plan.repo, plan.issue_id, plan.change_body(), retry_unsafe=True)
        except BitbucketError as exc:
            _failed(link_id, plan.connection_id, plan.outbox_ids, exc)
            raise_if_retryable(exc)
            return f"failed: {exc}"
        with transaction() as session:
            again = reverse.finish_fields(session, plan, result)
        outcome = f"pushed {', '.join(f.field for f in plan.fields)}"
        if again:
            return outcome + "; " + push_link(link_id, client_factory)
        log.info("sync.pushed link=%s fields=%s", link_id, [f.field for f in plan.fields])

    with transaction() as session:
        comments = reverse.plan_comments(session, link_id)
    for item in comments:
        client = client_factory(item.connection_id)
        try:
            posted = _find_posted(client, item) if item.resume else None
            posted = posted or client.create_comment(item.repo, item.issue_id, item.body)
        except BitbucketError as exc:
            _failed(link_id, item.connection_id, [item.outbox_id], exc)
            raise_if_retryable(exc)
            continue
        with transaction() as session:
            reverse.finish_comment(session, item, posted)
        outcome += f"; comment {item.ticket_comment_id} posted"
    return outcome


def _find_posted(client, item: reverse.CommentPush) -> dict | None:
    """A previous attempt may have posted the comment and died before recording it: find it
    by its marker rather than post it twice (one read, only on a resumed attempt)."""
    marker = comment_marker(item.connection, item.ticket_comment_id)
    for comment in client.iter_comments(item.repo, item.issue_id):
        if marker in ((comment.get("content") or {}).get("raw") or ""):
            return comment
    return None


def raise_if_retryable(exc: BitbucketError) -> None:
    if isinstance(exc, REMOTE_RETRYABLE):
        raise exc


def _failed(link_id: int, connection_id: int, outbox_ids: list[int], exc: BitbucketError) -> None:
    permanent = not isinstance(exc, REMOTE_RETRYABLE)
    with transaction() as session:
        if isinstance(exc, TrackerRemoved):
            reverse.mark_tracker_removed(session, connection_id)
        reverse.fail(session, link_id, outbox_ids, f"{exc.__class__.__name__}: {exc}", permanent=permanent)
    log.warning("sync.push_failed link=%s error=%s permanent=%s", link_id, exc.__class__.__name__, permanent)


def give_up(link_id: int, reason: str) -> None:
    """After the task's last retry: the outbox rows are marked failed, kept for a replay."""
    from sqlalchemy import select
    from worker.db.models import OutgoingChange
    with transaction() as session:
        ids = list(session.scalars(select(OutgoingChange.id).where(
            OutgoingChange.link_id == link_id, OutgoingChange.state.in_(("pending", "sending")))))
        reverse.fail(session, link_id, ids, reason, permanent=True)
