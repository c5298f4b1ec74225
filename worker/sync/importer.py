"""The import of what Bitbucket's webhooks missed: issues and comments read from its REST API
become *synthetic deliveries*, stored and processed through the same delivery path as the
webhooks'. Reconciliation (`worker.sync.reconcile`) and backfill (`worker.sync.backfill`)
both feed it.

Each issue that we do not already hold at its version becomes a synthetic delivery (event
`issue:updated`, a body shaped like the webhook's: `issue` is the REST issue, which carries
the same fields as the webhook's), stored by the receiver's insert (`deliveries.insert_rows`)
under the same unique key as the real ones, (connection, request_uuid) with request_uuid
derived from (repo, issue, updated_on). The delivery is then processed inline by
`forward.process_delivery`, exactly as a worker would process a webhook: lock the link, merge
each field against the shadow, apply, ledger. So the import has no merge logic of its own,
re-running it stores nothing twice, and a webhook that turns up late finds the link already
at its version (no second effect). An issue that we already hold at its version (its webhook
arrived) needs no delivery and no processing. New comments become internal notes the same
way (a synthetic `issue:comment_created` delivery per comment, request_uuid from (repo,
issue, comment id)); edits and deletions of the comments of every listed issue are noticed
on the way (`worker.sync.comment_scan`).

Why inline and not enqueued: the watermark must not pass an issue before that issue is
durable, and the comment pass of an issue needs its link, which processing creates; inline
processing also gives the report its applied/noop/stale counts, and throttles a large
catch-up by the database instead of flooding the queue. (A stored delivery is durable either
way: if the process dies right after storing it, the sweeper `tasks.requeue_pending` queues it,
and the next run finds it by its request_uuid and processes it if it is still `received`.)
"""
from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from worker.bitbucket.scan import PAGELEN, utc_iso
from worker.db.models import Connection, Delivery, LedgerEntry, Link, utcnow
from worker.db.session import transaction
from worker.engine.events import parse_time
from worker.sync import deliveries, forward
from worker.sync.comment_scan import CommentScan

log = logging.getLogger("bbsync.reconcile")

#: Transient database errors (a lock timeout, losing the race to create the same link with a
#: concurrent webhook, see deliveries.RETRYABLE): processing is tried again, a few times, inline.
PROCESS_ATTEMPTS = 3


@dataclass
class SyncReport:
    """Counts shared by reconciliation and backfill (benchmarks read them)."""

    connection_id: int
    connection: str = ""
    api_calls: int = 0            # logical requests: one per page fetched (retries not counted)
    pages: int = 0                # issue-list pages processed
    issues_seen: int = 0
    up_to_date: int = 0           # issues we already held at their version: nothing stored
    deliveries_stored: int = 0    # new synthetic deliveries (issues and comments)
    deliveries_processed: int = 0
    deliveries_skipped: int = 0   # found already processed (or dead-lettered)
    deliveries_failed: int = 0    # dead-lettered by this run (see `bbsync deliveries`)
    deliveries_held: int = 0      # waiting behind an earlier failed delivery of the issue
    links_created: int = 0        # issues seen for the first time (a ticket made or adopted)
    comment_scans: int = 0        # issues whose comments were listed
    comments_stored: int = 0      # comments without a comment link, sent through the engine
    comment_edits: int = 0
    comment_deletions: int = 0
    issues_missing: int = 0       # linked issues Bitbucket no longer has (404 on comments)
    outcomes: Counter = field(default_factory=Counter)   # ledger outcomes of the deliveries
    enqueue: list[str] = field(default_factory=list)     # delivery ids the caller must enqueue
    errors: list[str] = field(default_factory=list)

    @property
    def applied(self) -> int:
        return self.outcomes["applied"]

    @property
    def noop(self) -> int:
        return self.outcomes["noop"]

    @property
    def stale(self) -> int:
        return self.outcomes["stale"]

    def as_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "outcomes"}
        out["outcomes"] = dict(self.outcomes)
        return out


# --- request uuids ----------------------------------------------------------------------------

def _uuid(*parts: Any) -> str:
    """A stable request_uuid (the column holds 64 characters: longer ones are hashed)."""
    text = "reconcile:" + ":".join(str(p) for p in parts)
    if len(text) <= 64:
        return text
    return "reconcile:" + hashlib.sha256(text.encode()).hexdigest()[:54]


def issue_request_uuid(repo: str, issue_id: int, updated_on: datetime | None) -> str:
    """One per issue version: the same issue at the same `updated_on` is stored once, by
    reconciliation or backfill, however often it is read."""
    return _uuid(repo, issue_id, utc_iso(updated_on) if updated_on else "none")


def comment_request_uuid(repo: str, issue_id: int, comment_id: int) -> str:
    return _uuid(repo, issue_id, "comment", comment_id)


# --- feeding the engine -----------------------------------------------------------------------

class Importer:
    """Turns Bitbucket issues and comments into synthetic deliveries and runs the engine on
    them, one issue at a time, each step in its own short transaction."""

    def __init__(self, conn: Connection, client: Any, report: SyncReport, pagelen: int = PAGELEN,
                 *, remember_scans: bool = False):
        self.connection_id = conn.id
        self.connection = conn.name
        self.client = client
        self.report = report
        self.pagelen = pagelen
        self.comment_scan = CommentScan(conn.id, conn.name, client, report, pagelen, conn.target)
        # (repo, issue) whose comments were listed, when a later full comment scan must not
        # list them twice (ids only; off for backfill, whose memory must not grow with issues).
        self.scanned: set[tuple[str, int]] | None = set() if remember_scans else None

    def issue(self, repo: str, issue: dict, *, comments: str, seen_up_to: datetime | None = None) -> None:
        """One issue, as the engine would see its webhook, then (maybe) its comments. Only an
        issue touched after its creation can have comments; of those, comments= lists:
        "all": every one; "changed": those we were behind on, or that changed after
        `seen_up_to` (the previous run's watermark; None: all are new), since a comment whose
        webhook was lost leaves no trace once a later webhook of the issue arrived;
        "missed": only those we were behind on; "none": none."""
        self.report.issues_seen += 1
        issue_id, updated = issue["id"], parse_time(issue.get("updated_on"))
        with transaction() as session:
            link = self._link(session, repo, issue_id)
            current = (link is not None and updated is not None and link.bitbucket_updated_at is not None
                       and link.bitbucket_updated_at >= updated)
            if not current:
                body = {"issue": issue, "repository": {"full_name": repo}, "actor": None}
                delivery_id, status, fresh = self._store(
                    session, issue_request_uuid(repo, issue_id, updated), "issue:updated", body,
                    f"{repo}#{issue_id}")
        if current:
            self.report.up_to_date += 1
        else:
            self._process(delivery_id, status, fresh, new_link=(repo, issue_id) if link is None else None)
        if comments != "none" and _touched(issue) and (
                comments == "all" or not current or (
                    comments == "changed" and (seen_up_to is None or updated is None or updated > seen_up_to))):
            self.comments(repo, issue_id, issue)

    def comments(self, repo: str, issue_id: int, issue: dict | None = None) -> None:
        """List one issue's comments: new ones go through the engine, edits and deletions
        (for which Bitbucket has no webhook) are applied on the way (CommentScan)."""
        if self.scanned is not None:
            if (repo, issue_id) in self.scanned:
                return
            self.scanned.add((repo, issue_id))
        for c in self.comment_scan.scan(repo, issue_id):
            ref = {"type": "issue", "id": issue_id}
            if issue is not None and isinstance(issue.get("links"), dict):
                ref["links"] = {"html": issue["links"].get("html")}
            # No issue fields ride along: this delivery is about the comment only, so it can
            # neither be stale nor move a field.
            body = {"issue": ref, "repository": {"full_name": repo}, "actor": c.get("user"),
                    "comment": c}
            with transaction() as session:
                delivery_id, status, fresh = self._store(
                    session, comment_request_uuid(repo, issue_id, c["id"]), "issue:comment_created",
                    body, f"{repo}#{issue_id}")
            if fresh:
                self.report.comments_stored += 1
            self._process(delivery_id, status, fresh)

    # -- deliveries --

    def _link(self, session: Session, repo: str, issue_id: int) -> Link | None:
        return session.scalar(select(Link).where(
            Link.connection_id == self.connection_id, Link.bitbucket_repo == repo,
            Link.bitbucket_issue_id == issue_id))

    def _store(self, session: Session, request_uuid: str, event_key: str, body: dict,
               key: str) -> tuple[str, str, bool]:
        """Insert the synthetic delivery unless one with its request_uuid exists. Returns
        (id, status, inserted). A new one is stored with its first run already counted (the
        run starts right after this commits), which saves a transaction per issue."""
        row = dict(id=uuid.uuid4().hex, connection_id=self.connection_id, request_uuid=request_uuid,
                   hook_uuid=None, event_key=event_key, attempt=1, body=_dumps(body),
                   issue_key=key[:300], status="received", runs=1, error=None, received_at=utcnow())
        (delivery_id, inserted), = deliveries.insert_rows(session.connection(), [row])
        if inserted:
            return delivery_id, "received", True
        return delivery_id, session.scalar(select(Delivery.status).where(Delivery.id == delivery_id)), False

    def _process(self, delivery_id: str, status: str, fresh: bool,
                 new_link: tuple[str, int] | None = None) -> None:
        """What the worker's task does with a delivery, inline. `new_link`: the issue had no
        link before; count it if processing made one."""
        if fresh:
            self.report.deliveries_stored += 1
        if status != "received":
            self.report.deliveries_skipped += 1
            return
        if not fresh:  # stored by an earlier run that did not finish it: count this start
            started = deliveries.begin_run(delivery_id)
            if started is None or started.status != "received":  # dead-lettered: too many starts
                self.report.deliveries_skipped += 1
                return

        def run(session: Session):
            outcome = forward.process_delivery(session, delivery_id)
            # Read in the same transaction (after a flush), not in one more.
            counts = list(session.execute(
                select(LedgerEntry.outcome, func.count()).where(LedgerEntry.delivery_id == delivery_id)
                .group_by(LedgerEntry.outcome)))
            return outcome, counts, new_link is not None and self._link(session, *new_link) is not None

        def retry(attempt: int, _exc: BaseException) -> None:
            log.info("reconcile.process_retry delivery=%s attempt=%d", delivery_id, attempt)

        try:
            outcome, counts, linked = deliveries.retrying(run, PROCESS_ATTEMPTS, retry)
        except OperationalError:
            raise  # the database is in trouble: stop; the run ends before its watermark
            # moves, and the stored delivery is found again by the next run
        except Exception as exc:
            # A bug or bad data, or a constraint that fails every time (not a race): dead-
            # lettered, as the task does, so that one issue cannot stop reconciliation for good.
            self._dead_letter(delivery_id, exc)
            return
        self.report.enqueue.extend(outcome.released)
        if outcome.status == "held":
            self.report.deliveries_held += 1
        elif outcome.status == "skipped":
            self.report.deliveries_skipped += 1
        else:
            self.report.deliveries_processed += 1
        self.report.links_created += linked
        for name, n in counts:
            self.report.outcomes[name] += n

    def _dead_letter(self, delivery_id: str, exc: Exception) -> None:
        log.error("reconcile.delivery_failed delivery=%s error=%s", delivery_id, exc.__class__.__name__)
        deliveries.dead_letter(delivery_id, f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}")
        self.report.deliveries_failed += 1
        self.report.errors.append(f"delivery {delivery_id} dead-lettered: {exc.__class__.__name__}")


def _dumps(body: dict) -> str:
    """A synthetic delivery's body. The REST API's text may hold lone surrogates (its JSON is
    parsed by the stdlib, which accepts "\\ud800"): ensure_ascii writes them back as escapes,
    which the worker's json.loads reads and normalize cleans, where orjson (or UTF-8) would
    refuse them and the issue would never be imported."""
    return json.dumps(body, ensure_ascii=True)


def _touched(issue: dict) -> bool:
    """Whether anything happened to the issue after its creation (an edit, a comment). An
    issue that was never touched has no comments, so listing them would be a wasted call."""
    created, updated = parse_time(issue.get("created_on")), parse_time(issue.get("updated_on"))
    return created is None or updated is None or updated != created
