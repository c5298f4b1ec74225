"""Reconciliation: what the webhooks missed, fed into the same engine as the webhooks.

Bitbucket tries a webhook three times without delay and then gives up, drops bodies over
256 KB, and has no webhook at all for comment edits, comment deletions or issue deletions. So
a periodic poll asks, per repository, for the issues updated since a watermark:

    GET .../issues?q=updated_on >= <watermark - overlap>&sort=updated_on&pagelen=100

and turns each issue that we do not already hold at that version into a *synthetic delivery*,
processed inline exactly as a worker processes a webhook. So reconciliation has no merge
logic of its own, re-running it stores nothing twice, and a webhook that turns up late finds
the link already at its version (no second effect).

This module is the runner (`reconcile_connection`): per repository, it reads the issue
listing from the watermark, imports each page, then moves the watermark. The parts:

- `worker.bitbucket.scan`: the keyset paging over the issue listing, and what a run costs;
- `worker.sync.watermarks`: where each run starts, and how far it has come;
- `worker.sync.importer`: issues and comments as synthetic deliveries, stored and processed
  through the webhooks' delivery path (and why inline, not enqueued);
- `worker.sync.comment_scan`: one issue's comments against the notes made from them, for
  the edits and deletions Bitbucket sends no webhook for.

Comments are per issue in Bitbucket's API (no listing spans a repository), so every comment
check costs one call (per 100 comments) per issue. They are left out of the frequent pass and
checked by rarer ones; only issues touched after their creation are ever listed (created_on
!= updated_on: a new comment bumps `updated_on`, so an untouched issue has none). `comments=`:
- "none" (the default; beat's 5-minute pass): issues only. The cost is the issue listing and
  nothing else: one call, plus one per ~100 changed issues, whatever the webhooks missed. A
  missed field change converges here; a missed comment waits for the comment pass.
- "missed": also the comments of the issues we were behind on (the link was behind or absent).
- "changed" (beat's hourly comment pass): reads from its own watermark and lists the comments
  of every issue touched since the comment pass last ran, even when the issue's webhooks
  arrived: a comment whose webhook was lost leaves no trace once a later webhook of the same
  issue has arrived, so this is what makes comments converge. Cost: the listing, plus one
  call per issue touched since the previous comment pass; re-read issues are not listed again.
- "all" (beat's nightly pass): every issue read, then every other linked issue of the
  repository: a full comment scan, one call per linked issue. Bitbucket bumps nothing on a
  comment edit or deletion, so an edit or deletion on an otherwise unchanged issue is seen
  only by this scan.

The helpdesk side: local edits and comments whose outbox rows are still pending or sending
after `stuck_after` are reported (their link ids) for the caller to enqueue `push_link`
again, as are deliveries of the connection still waiting to be processed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select

from worker.bitbucket.errors import BitbucketError, TrackerRemoved
from worker.bitbucket.scan import PAGELEN, IssueScan
from worker.db.models import Connection, Delivery, Link, utcnow
from worker.db.session import transaction
from worker.engine.states import DeliveryStatus
from worker.sync import outbox, reverse, watermarks
from worker.sync.clients import ClientFactory, client_for
from worker.sync.importer import Importer, SyncReport

log = logging.getLogger("bbsync.reconcile")

OVERLAP = timedelta(seconds=30)       # how far before the watermark each run starts reading
STUCK_AFTER = timedelta(minutes=15)   # outbox rows / deliveries older than this are re-queued
COMMENT_MODES = ("none", "missed", "changed", "all")


@dataclass
class ReconcileReport(SyncReport):
    stuck_links: list[int] = field(default_factory=list)   # links to enqueue push_link for
    repos: dict[str, str] = field(default_factory=dict)    # repo -> "ok" | error


def reconcile_connection(connection_id: int, client_factory: ClientFactory = client_for, *,
                         comments: str = "none", overlap: timedelta = OVERLAP,
                         stuck_after: timedelta = STUCK_AFTER,
                         pagelen: int = PAGELEN) -> ReconcileReport:
    """Poll every repository of the connection for what its webhooks missed, and feed it to
    the engine. Returns counts, the deliveries to enqueue (`report.enqueue`) and the links
    whose pushes are stuck (`report.stuck_links`, to enqueue `push_link`).

    A Bitbucket error ends that repository's pass (its watermark stays where the last full
    page left it) and is reported; the other repositories go on. Database errors propagate.
    """
    if comments not in COMMENT_MODES:
        raise ValueError(f"comments must be one of {', '.join(COMMENT_MODES)}, not {comments!r}")
    with transaction() as session:
        conn = session.get(Connection, connection_id)
        if conn is None:
            raise LookupError(f"connection {connection_id} does not exist")
        repos = [r.full_name for r in conn.repos]
        removed = conn.tracker_removed_at
        session.expunge(conn)
    report = ReconcileReport(connection_id=connection_id, connection=conn.name)
    if removed is not None:
        report.errors.append("the issue tracker was removed (410); nothing to poll")
    else:
        client = client_factory(connection_id)
        importer = Importer(conn, client, report, pagelen, remember_scans=comments == "all")
        for repo in repos:
            report.repos[repo] = _reconcile_repo(importer, conn, repo, comments, overlap, pagelen)
    _stuck_work(report, connection_id, stuck_after)
    log.info("reconcile.done connection=%s calls=%d seen=%d stored=%d outcomes=%s stuck=%d errors=%d",
             report.connection, report.api_calls, report.issues_seen, report.deliveries_stored,
             dict(report.outcomes), len(report.stuck_links), len(report.errors))
    return report


def _reconcile_repo(importer: Importer, conn: Connection, repo: str, comments: str,
                    overlap: timedelta, pagelen: int) -> str:
    report = importer.report
    comment_pass = comments == "changed"
    start = watermarks.start(conn, repo, overlap, comment_pass=comment_pass)
    scan = IssueScan(importer.client, repo, since=start.since, pagelen=pagelen)
    pages = scan.pages()
    result = "ok"
    try:
        try:
            for page in pages:
                for issue in page:
                    importer.issue(repo, issue, comments=comments, seen_up_to=start.seen_up_to)
                report.pages += 1
                watermarks.advance(conn.id, repo, page, main=start.covers_main, comments=comment_pass)
            if comments == "all":
                _scan_linked(importer, conn.id, repo)
                watermarks.comments_caught_up(conn.id, repo)
        finally:
            pages.close()
            report.api_calls += scan.calls
    except BitbucketError as exc:
        result = f"{exc.__class__.__name__}: {exc}"
        report.errors.append(f"{repo}: {result}")
        log.warning("reconcile.repo_failed connection=%s repo=%s error=%s", conn.name, repo,
                    exc.__class__.__name__)
        if isinstance(exc, TrackerRemoved):
            with transaction() as session:
                reverse.mark_tracker_removed(session, conn.id)
    watermarks.record_run(conn.id, repo, result)
    return result


def _scan_linked(importer: Importer, connection_id: int, repo: str) -> None:
    """comments="all": every linked issue's comments (a full comment scan)."""
    with transaction() as session:
        issue_ids = list(session.scalars(select(Link.bitbucket_issue_id).where(
            Link.connection_id == connection_id, Link.bitbucket_repo == repo).order_by(Link.bitbucket_issue_id)))
    for issue_id in issue_ids:
        importer.comments(repo, issue_id)


def _stuck_work(report: ReconcileReport, connection_id: int, stuck_after: timedelta) -> None:
    """The helpdesk side: pushes and deliveries that should have happened long ago."""
    cutoff = utcnow() - stuck_after
    with transaction() as session:
        report.stuck_links = outbox.waiting_links(session, cutoff, connection_id)
        waiting = list(session.scalars(select(Delivery.id).where(
            Delivery.connection_id == connection_id, Delivery.status == DeliveryStatus.RECEIVED,
            Delivery.received_at <= cutoff).order_by(Delivery.received_at)))
    report.enqueue = list(dict.fromkeys(report.enqueue + waiting))
