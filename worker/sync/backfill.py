"""Backfill: import the issues that existed before the connection (or its webhook) did.

Every issue of every repository of the connection (or only those with `updated_on >= since`)
goes through the same path as reconciliation (`worker.sync.importer`): a synthetic
`issue:updated` delivery per issue version, processed inline by the forward engine, which
creates a ticket and a link for an issue it has not seen and changes nothing for one it holds
at that version; then the issue's comments, if it was ever touched after its creation, each
as a synthetic `issue:comment_created` delivery (an internal note, once).

Streaming: issues are read page by page (keyset paging on (updated_on, id), see
`worker.bitbucket.scan.IssueScan`), each issue processed and dropped; at most one page is held.

Resumable: after each page the cursor, the (updated_on, id) of the last issue fully
processed, is committed in `backfill_cursors`, one row per repository. An interrupted
backfill (an exception, a killed process) continues from it on the next call with the same
`since` (repositories that call had finished are not read again); the issues of the
interrupted page are read again and skipped by their request_uuids (nothing twice). A
finished backfill (every repository `done`) starts over when called again, and creates
nothing new: an issue already held at its version stores no delivery at all.

When a repository's backfill finishes, the reconciliation watermark is moved up to the last
issue read (if that leaves no gap), so the next reconciliation does not read it all again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker.bitbucket.scan import PAGELEN, IssueScan, newest_key
from worker.db.models import Connection, utcnow
from worker.db.session import transaction
from worker.db.watermarks import BackfillCursor
from worker.sync.clients import ClientFactory, client_for
from worker.sync.importer import Importer, SyncReport
from worker.sync.watermarks import seed_watermark

log = logging.getLogger("bbsync.backfill")

COMMENT_MODES = ("all", "missed", "none")


@dataclass
class BackfillPage:
    """What `page_callback` is told after each page is committed."""

    repo: str
    page: int              # pages of this repository in this call
    issues: int            # issues in the page
    issues_seen: int       # issues of this repository so far, this run (resumed runs included)
    cursor: tuple[datetime, int] | None
    report: "BackfillReport"


@dataclass
class BackfillReport(SyncReport):
    resumed: dict[str, str] = field(default_factory=dict)   # repo -> cursor it resumed from
    repos: dict[str, str] = field(default_factory=dict)     # repo -> "done" | "done before"


def backfill(connection_id: int, since: datetime | None = None,
             client_factory: ClientFactory = client_for,
             page_callback: Callable[[BackfillPage], Any] | None = None, *,
             comments: str = "all", pagelen: int = PAGELEN) -> BackfillReport:
    """Import every existing issue of the connection's repositories (optionally only those
    with `updated_on >= since`) and their comments. Resumes an interrupted run with the same
    `since`. Errors (Bitbucket's, or `page_callback`'s) propagate after the last complete
    page was committed; call again to continue.

    comments: "all" lists the comments of every issue touched after its creation (thorough;
    one call per such issue), "missed" only of those we were behind on, "none" never.
    """
    if comments not in COMMENT_MODES:
        raise ValueError(f"comments must be one of {', '.join(COMMENT_MODES)}, not {comments!r}")
    if since is not None and since.tzinfo is None:
        raise ValueError("since must be timezone-aware")
    with transaction() as session:
        conn = session.get(Connection, connection_id)
        if conn is None:
            raise LookupError(f"connection {connection_id} does not exist")
        repos = [r.full_name for r in conn.repos]
        session.expunge(conn)
        cursors = {c.repo: (c.state, c.since) for c in session.scalars(
            select(BackfillCursor).where(BackfillCursor.connection_id == connection_id))}
    # An unfinished repository with the same `since` means this call continues an interrupted
    # one: the repositories that call finished are not read again. Otherwise all start over.
    resuming = any(cursors.get(repo) == ("running", since) for repo in repos)
    report = BackfillReport(connection_id=connection_id, connection=conn.name)
    importer = Importer(conn, client_factory(connection_id), report, pagelen)
    for repo in repos:
        if resuming and cursors.get(repo) == ("done", since):
            report.repos[repo] = "done before"
            continue
        _backfill_repo(importer, conn, repo, since, comments, pagelen, page_callback)
        report.repos[repo] = "done"
    log.info("backfill.done connection=%s calls=%d seen=%d stored=%d created=%d outcomes=%s",
             report.connection, report.api_calls, report.issues_seen, report.deliveries_stored,
             report.links_created, dict(report.outcomes))
    return report


def _backfill_repo(importer: Importer, conn: Connection, repo: str, since: datetime | None,
                   comments: str, pagelen: int, page_callback) -> None:
    report: BackfillReport = importer.report  # type: ignore[assignment]
    with transaction() as session:
        row = _start(session, conn.id, repo, since)
        after = (row.updated_on, row.issue_id) if row.updated_on is not None else None
        seen = row.issues_seen
    if after is not None:
        report.resumed[repo] = f"{after[0].isoformat()} #{after[1]}"
        log.info("backfill.resume connection=%s repo=%s after=%s", conn.name, repo, report.resumed[repo])
    scan = IssueScan(importer.client, repo, since=since, after=after, pagelen=pagelen)
    pages = scan.pages()
    number = 0
    try:
        for page in pages:
            for issue in page:
                importer.issue(repo, issue, comments=comments)
            report.pages += 1
            number += 1
            count = len(page)
            seen += count
            cursor = _commit_page(conn.id, repo, page)
            del page  # dropped before the next one is read
            if page_callback is not None:
                page_callback(BackfillPage(repo, number, count, seen, cursor, report))
    finally:
        pages.close()
        report.api_calls += scan.calls
    with transaction() as session:
        row = session.get(BackfillCursor, (conn.id, repo), with_for_update=True)
        row.state, row.finished_at, row.updated_at = "done", utcnow(), utcnow()
        covered_to = (row.updated_on, row.issue_id) if row.updated_on is not None else None
        seed_watermark(session, conn, repo, since, covered_to, comments=comments == "all")


def _start(session: Session, connection_id: int, repo: str, since: datetime | None) -> BackfillCursor:
    """The repository's cursor: kept when an unfinished run with the same `since` left it,
    otherwise reset for a fresh run."""
    row = session.get(BackfillCursor, (connection_id, repo), with_for_update=True)
    if row is None:
        row = BackfillCursor(connection_id=connection_id, repo=repo)
        session.add(row)
    elif row.state == "running" and row.since == since:
        return row
    row.since, row.updated_on, row.issue_id = since, None, None
    row.state, row.pages, row.issues_seen = "running", 0, 0
    row.started_at = row.updated_at = utcnow()
    row.finished_at = None
    session.flush()
    return row


def _commit_page(connection_id: int, repo: str, page: list[dict]) -> tuple[datetime, int] | None:
    newest = newest_key(page)
    with transaction() as session:
        row = session.get(BackfillCursor, (connection_id, repo), with_for_update=True)
        row.pages += 1
        row.issues_seen += len(page)
        row.updated_at = utcnow()
        if newest is not None and (row.updated_on is None or newest > (row.updated_on, row.issue_id or 0)):
            row.updated_on, row.issue_id = newest
        return (row.updated_on, row.issue_id) if row.updated_on is not None else None
