"""Reconciliation's watermarks: how far it has read each repository of a connection, read and
moved here (the table is `worker.db.watermarks.ReconcileWatermark`).

Per (connection, repository), the newest `updated_on` of the issues processed, committed
after each page (the comment pass keeps a second one, `comments_updated_on`) (so a crash
re-reads at most one page, idempotently). The query starts `overlap` (default 30 s) *before*
it, with `>=`: an issue updated in the same microsecond as the watermark, or whose update
became visible a little late, is read again and, if we do not hold that version yet,
processed; re-read issues we hold are skipped. The very first run starts at the
connection's creation (minus a clock-skew margin): issues older than that are the backfill's
job (`worker.sync.backfill`), which seeds the watermark.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from worker.bitbucket.scan import newest_key
from worker.db.models import Connection, utcnow
from worker.db.session import transaction
from worker.db.watermarks import ReconcileWatermark

FIRST_RUN_SKEW = timedelta(minutes=5)  # first run: this much before the connection existed


@dataclass(frozen=True)
class Start:
    """Where one run reads a repository from."""

    since: datetime             # the lower bound of the issue listing
    seen_up_to: datetime | None  # the watermark the run started from (None: never ran)
    covers_main: bool           # the run leaves no gap behind the main watermark: it may move it


def start(conn: Connection, repo: str, overlap: timedelta, *, comment_pass: bool) -> Start:
    with transaction() as session:
        mark = watermark(session, conn.id, repo)
        # The comment pass reads from its own watermark: the frequent pass has moved the main
        # one past issues whose comments nobody listed.
        seen_up_to = mark.comments_updated_on if comment_pass else mark.updated_on
        since = (seen_up_to - overlap) if seen_up_to else first_run_start(conn)
        # Reading from below the main watermark leaves no gap behind it: the main one may move.
        covers_main = mark.updated_on is None or since <= mark.updated_on
    return Start(since, seen_up_to, covers_main)


def watermark(session: Session, connection_id: int, repo: str) -> ReconcileWatermark:
    """The repository's watermark row, locked (created on its first run)."""
    mark = session.get(ReconcileWatermark, (connection_id, repo), with_for_update=True)
    if mark is None:
        mark = ReconcileWatermark(connection_id=connection_id, repo=repo, issues_seen=0, runs=0)
        session.add(mark)
        session.flush()
    return mark


def advance(connection_id: int, repo: str, page: list[dict], *, main: bool = True,
            comments: bool = False) -> None:
    """After a page was processed: move the watermarks to its newest issue (never back)."""
    newest = newest_key(page)
    with transaction() as session:
        mark = watermark(session, connection_id, repo)
        mark.issues_seen += len(page)
        if newest is None:
            return
        if main and (mark.updated_on is None or newest[0] > mark.updated_on):
            mark.updated_on, mark.issue_id = newest
        if comments and (mark.comments_updated_on is None or newest[0] > mark.comments_updated_on):
            mark.comments_updated_on = newest[0]


def comments_caught_up(connection_id: int, repo: str) -> None:
    """After a full comment scan: every issue up to the main watermark had its comments listed."""
    with transaction() as session:
        mark = watermark(session, connection_id, repo)
        if mark.updated_on is not None and (mark.comments_updated_on is None
                                            or mark.comments_updated_on < mark.updated_on):
            mark.comments_updated_on = mark.updated_on


def record_run(connection_id: int, repo: str, result: str) -> None:
    """A run of the repository ended: "ok", or the error that ended it."""
    with transaction() as session:
        mark = watermark(session, connection_id, repo)
        mark.runs += 1
        mark.last_run_at = utcnow()
        mark.last_error = None if result == "ok" else result[:2000]


def first_run_start(conn: Connection) -> datetime:
    """Where a repository never reconciled before starts: the connection's creation (our
    clock), less a margin for the skew between our clock and Bitbucket's."""
    return conn.created_at - FIRST_RUN_SKEW


def seed_watermark(session: Session, conn: Connection, repo: str, covered_from: datetime | None,
                   covered_to: tuple[datetime, int] | None, *, comments: bool = False) -> bool:
    """A finished backfill read every issue updated from `covered_from` (None: all) to
    `covered_to` (and, with `comments`, listed their comments): reconciliation need not read
    them again. Moves each watermark forward only if that leaves no gap behind it."""
    if covered_to is None:
        return False
    mark = watermark(session, conn.id, repo)
    moved = False
    if (covered_from is None or covered_from <= (mark.updated_on or first_run_start(conn))) and (
            mark.updated_on is None or covered_to[0] > mark.updated_on):
        mark.updated_on, mark.issue_id = covered_to
        moved = True
    if comments and (covered_from is None or covered_from <= (mark.comments_updated_on or first_run_start(conn))) and (
            mark.comments_updated_on is None or covered_to[0] > mark.comments_updated_on):
        mark.comments_updated_on = covered_to[0]
    return moved
