"""Running a link's outbox: the I/O around worker.sync.reverse (to Bitbucket) and
worker.sync.push_target (to a remote target side).

Database work happens in short transactions; the remote call happens between them, never
inside one, so a slow Bitbucket never holds a lock on our side.
"""
from __future__ import annotations

import logging

from worker import connections
from worker.bitbucket.errors import RETRYABLE as REMOTE_RETRYABLE
from worker.bitbucket.errors import BitbucketError, TrackerRemoved
from worker.db.session import transaction
from worker.engine.markers import comment_marker
from worker.sync import outbox, push_target, reverse, reverse_comments
from worker.sync.clients import client_for

log = logging.getLogger("bbsync.sync")


def push_link(link_id: int, client_factory=client_for) -> str:
    """Write a link's outbox: first to a remote target side (a new item must exist before
    Bitbucket can be told of it), then to Bitbucket. Nothing while the link's connection is
    paused: its outbox waits, and resuming queues it."""
    with transaction() as session:
        if connections.paused(session, link_id=link_id):
            return "paused"
    done: list[str] = push_target.push(link_id)
    while True:
        with transaction() as session:
            plan = reverse.plan_fields(session, link_id)
        if plan is None:
            break
        try:
            client = client_factory(plan.connection_id)
            # Re-applying the same values changes nothing, so this write may be retried freely.
            result = client.post_change(plan.repo, plan.issue_id, plan.change_body(), retry_unsafe=True)
        except BitbucketError as exc:
            _failed(link_id, plan.connection_id, plan.outbox_ids, exc)
            raise_if_retryable(exc)
            return f"failed: {exc}"
        except BaseException:
            _give_back(plan.attempts, written=set(plan.attempts))
            raise
        try:
            with transaction() as session:
                again = reverse.finish_fields(session, plan, result)
        except BaseException:
            _give_back(plan.attempts, written=set(plan.attempts))
            raise
        done.append(f"pushed {', '.join(f.field for f in plan.fields)}")
        log.info("sync.pushed link=%s fields=%s", link_id, [f.field for f in plan.fields])
        if not again:
            break

    # Comments are planned again after each batch: while this attempt held the link's
    # comments, other pushes left the replies that came in meanwhile to it.
    while True:
        with transaction() as session:
            comments = reverse_comments.plan_comments(session, link_id)
        if not comments:
            return "; ".join(done) or "nothing to push"
        for index, item in enumerate(comments):
            rest = comments[index + 1:]
            try:
                client = client_factory(item.connection_id)
                posted = _find_posted(client, item) if item.resume else None
                posted = posted or client.create_comment(item.repo, item.issue_id, item.body)
                with transaction() as session:
                    reverse_comments.finish_comment(session, item, posted)
            except BitbucketError as exc:
                _failed(link_id, item.connection_id, [item.outbox_id], exc)
                if isinstance(exc, REMOTE_RETRYABLE):
                    _give_back({p.outbox_id: p.attempt for p in rest}, {p.outbox_id for p in rest if p.resume})
                    raise
                continue
            except BaseException:
                # Anything else (the database, say): the retry resumes at once instead of
                # waiting for the claims to lapse; this comment may have been posted.
                _give_back({p.outbox_id: p.attempt for p in [item, *rest]},
                           {item.outbox_id} | {p.outbox_id for p in rest if p.resume})
                raise
            done.append(f"comment {item.note_id} posted")


def _give_back(claimed: dict[int, int], written: set[int]) -> None:
    with transaction() as session:
        outbox.release(session, claimed, written)


def _find_posted(client, item: reverse_comments.CommentPush) -> dict | None:
    """A previous attempt may have posted the comment and died before recording it: find it
    by its marker rather than post it twice (one read, only on a resumed attempt)."""
    marker = comment_marker(item.connection, item.note_id)
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
    """After the task's last retry: the outbox rows are marked failed, kept for a replay (not
    those another attempt holds a live claim on: that attempt is writing them now)."""
    with transaction() as session:
        reverse.fail(session, link_id, outbox.unheld_rows(session, link_id), reason, permanent=True)
