"""Reconciliation: what the webhooks missed, fed into the same engine as the webhooks.

Bitbucket tries a webhook three times without delay and then gives up, drops bodies over
256 KB, and has no webhook at all for comment edits, comment deletions or issue deletions. So
a periodic poll asks, per repository, for the issues updated since a watermark:

    GET .../issues?q=updated_on >= <watermark - overlap>&sort=updated_on&pagelen=100

and turns each issue that we do not already hold at that version into a *synthetic delivery*
(event `issue:updated`, a body shaped like the webhook's: `issue` is the REST issue, which
carries the same fields as the webhook's), stored under the same unique key as the real ones,
(connection, request_uuid) with request_uuid derived from (repo, issue, updated_on). The
delivery is then processed inline by `forward.process_delivery`, exactly as a worker would
process a webhook: lock the link, merge each field against the shadow, apply, ledger. So
reconciliation has no merge logic of its own, re-running it stores nothing twice, and a
webhook that turns up late finds the link already at its version (no second effect).

Why inline and not enqueued: the watermark must not pass an issue before that issue is
durable, and the comment pass of an issue needs its link, which processing creates; inline
processing also gives the report its applied/noop/stale counts, and throttles a large
catch-up by the database instead of flooding the queue. (A stored delivery is durable either
way: if the process dies right after storing it, the sweeper `tasks.requeue_pending` queues it,
and the next run finds it by its request_uuid and processes it if it is still `received`.)

Cost, per repository and run: the issue listing is keyset-paged, one query per page of 100
(the next query starts at the last `updated_on` seen, `>=`, and skips the one issue it read
again), so `1 + (n - 1) // 99` calls for n issues read (n >= 1; never more than
`1 + ceil(n / 100)`), and exactly one when nothing changed. n counts the issues changed since
the watermark plus those re-read within the overlap window. An issue that we already hold at
its version (its webhook arrived) needs no delivery and no processing.

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
New comments become internal notes through the engine (a synthetic `issue:comment_created`
delivery per comment, request_uuid from (repo, issue, comment id)); edits and deletions of the
comments of every listed issue are noticed on the way.

Comment edits update the internal note made from the comment (helpdesk notes are not
editable locally, so the Bitbucket text is the only source of change). Comment deletions keep
the note (nothing we hold is thrown away), append a visible line saying it was deleted in
Bitbucket, record the deletion in the ledger and end the comment link (so it is recorded
once). For a comment we posted from the helpdesk, the helpdesk is the origin: an edit in
Bitbucket is not copied back, a deletion is recorded and the helpdesk comment is left as is.

The watermarks: per (connection, repository), the newest `updated_on` of the issues processed,
committed after each page (the comment pass keeps a second one, `comments_updated_on`) (so a crash re-reads at most one page, idempotently). The query
starts `overlap` (default 30 s) *before* it, with `>=`: an issue updated in the same
microsecond as the watermark, or whose update became visible a little late, is read again
and, if we do not hold that version yet, processed; re-read issues we hold are skipped.
The very first run starts at the connection's creation (minus a clock-skew margin): issues
older than that are the backfill's job (`worker.sync.backfill`), which seeds the watermark.

The helpdesk side: local edits and comments whose outbox rows are still pending or sending
after `stuck_after` are reported (their link ids) for the caller to enqueue `push_link`
again, as are deliveries of the connection still waiting to be processed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from worker import ledger
from worker.bitbucket.errors import BitbucketError, NotFound, TrackerRemoved
from worker.db.models import (CommentLink, Connection, Delivery, LedgerEntry, Link, OutgoingChange,
                              TicketComment, utcnow)
from worker.db.session import insert_ignoring_duplicates, transaction
from worker.db.watermarks import ReconcileWatermark
from worker.engine.events import NAME_LIMIT, comment_body, parse_time
from worker.engine.text import clean
from worker.sync import deliveries, forward, reverse
from worker.sync.clients import client_for
from worker.sync.markers import find_comment_marker

log = logging.getLogger("bbsync.reconcile")

PAGELEN = 100                         # Bitbucket's maximum for issues and comments
OVERLAP = timedelta(seconds=30)       # how far before the watermark each run starts reading
FIRST_RUN_SKEW = timedelta(minutes=5)  # first run: this much before the connection existed
STUCK_AFTER = timedelta(minutes=15)   # outbox rows / deliveries older than this are re-queued
COMMENT_MODES = ("none", "missed", "changed", "all")
#: Transient database errors (a lock timeout, losing the race to create the same link with a
#: concurrent webhook): processing is tried again, a few times, inline.
RETRYABLE = (OperationalError, IntegrityError)
PROCESS_ATTEMPTS = 3
DELETED_NOTE = "\n\n*[Deleted in Bitbucket (comment {cid}); kept here for the record.]*"

ClientFactory = Callable[[int], Any]


# --- reports ----------------------------------------------------------------------------------

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


@dataclass
class ReconcileReport(SyncReport):
    stuck_links: list[int] = field(default_factory=list)   # links to enqueue push_link for
    repos: dict[str, str] = field(default_factory=dict)    # repo -> "ok" | error


# --- request uuids and small helpers ----------------------------------------------------------

def _uuid(*parts: Any) -> str:
    """A stable request_uuid (the column holds 64 characters: longer ones are hashed)."""
    text = "reconcile:" + ":".join(str(p) for p in parts)
    if len(text) <= 64:
        return text
    return "reconcile:" + hashlib.sha256(text.encode()).hexdigest()[:54]


def issue_request_uuid(repo: str, issue_id: int, updated_on: datetime | None) -> str:
    """One per issue version: the same issue at the same `updated_on` is stored once, by
    reconciliation or backfill, however often it is read."""
    return _uuid(repo, issue_id, _iso(updated_on) if updated_on else "none")


def comment_request_uuid(repo: str, issue_id: int, comment_id: int) -> str:
    return _uuid(repo, issue_id, "comment", comment_id)


def _iso(when: datetime) -> str:
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def issue_key(issue: dict) -> tuple[datetime, int] | None:
    """The order issues are read in: (updated_on, id)."""
    when = parse_time(issue.get("updated_on"))
    return (when, issue["id"]) if when is not None else None


def _touched(issue: dict) -> bool:
    """Whether anything happened to the issue after its creation (an edit, a comment). An
    issue that was never touched has no comments, so listing them would be a wasted call."""
    created, updated = parse_time(issue.get("created_on")), parse_time(issue.get("updated_on"))
    return created is None or updated is None or updated != created


def _pages_for(count: int, pagelen: int) -> int:
    return max(1, math.ceil(count / pagelen))


# --- the issue scan ---------------------------------------------------------------------------

@dataclass
class IssueScan:
    """Issues of one repository with `updated_on >= since`, in (updated_on, id) order, page by
    page, and never more than one page held.

    Keyset paging: each page is a fresh query starting at the last `updated_on` read (`>=`,
    so issues sharing that microsecond are not lost), and what was already read is skipped.
    Offset paging (`next`) would skip an issue whenever one read earlier is updated or
    deleted during the scan (everything behind it moves up a place). Only when a whole page
    shares one `updated_on` (no progress possible by value) is `next` followed instead.
    """

    client: Any
    repo: str
    since: datetime | None = None
    after: tuple[datetime, int] | None = None   # resume: skip up to and including this key
    pagelen: int = PAGELEN
    calls: int = 0

    def pages(self) -> Iterator[list[dict]]:
        cursor = self.after
        floor = cursor[0] if cursor else self.since
        while True:
            query = f"updated_on >= {_iso(floor)}" if floor else None
            items = self.client.iter_issues(self.repo, q=query, sort="updated_on",
                                            pagelen=self.pagelen)
            self.calls += 1
            page: list[dict] = []
            in_page, more = 0, False
            try:
                for issue in items:
                    if in_page == self.pagelen:  # the client followed `next` (a page of ties)
                        self.calls += 1
                        in_page = 0
                    in_page += 1
                    key = issue_key(issue)
                    if key is not None and cursor is not None and key <= cursor:
                        continue
                    page.append(issue)
                    if key is not None:
                        cursor = key
                    if in_page == self.pagelen and page and cursor is not None:
                        more = True
                        break
            finally:
                items.close()
            if page:
                yield page
            if not more:
                return
            floor = cursor[0]


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
        # (repo, issue) whose comments were listed, when a later full comment scan must not
        # list them twice (ids only; off for backfill, whose memory must not grow with issues).
        self.scanned: set[tuple[str, int]] | None = set() if remember_scans else None

    # -- issues --

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

    # -- comments --

    def comments(self, repo: str, issue_id: int, issue: dict | None = None) -> None:
        """List one issue's comments: new ones go through the engine, edits and deletions
        (for which Bitbucket has no webhook) are applied here."""
        if self.scanned is not None:
            if (repo, issue_id) in self.scanned:
                return
            self.scanned.add((repo, issue_id))
        started = utcnow()
        try:
            listed = list(self.client.iter_comments(repo, issue_id, pagelen=self.pagelen))
        except NotFound:
            self.report.api_calls += 1
            self.report.issues_missing += 1
            log.info("reconcile.issue_missing connection=%s repo=%s issue=%s", self.connection,
                     repo, issue_id)
            return
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
                return  # not linked (its delivery failed or is held): nothing to compare with
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
        # Oldest first, as their webhooks would have come.
        for c in sorted(new, key=lambda c: (c.get("created_on") or "", c["id"])):
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

    def _edited(self, session: Session, link: Link, cl: CommentLink, comment: dict) -> None:
        # Cleaned as normalize cleans a comment (the note holds the cleaned text, so an
        # unchanged comment compares equal); what was changed goes in the ledger line.
        text, cleaned = clean("comment", comment_body(comment))
        if find_comment_marker(text, self.connection) is not None or self._from_helpdesk(session, link, cl):
            return  # our post of a helpdesk comment: the helpdesk is its origin
        note = session.get(TicketComment, _int(cl.target_comment_id))
        if note is None or note.body == text:
            return
        old, note.body = note.body, text
        author = _display_name(comment.get("user"))
        if author is not None:
            author = clean("comment author", author, NAME_LIMIT)[0] or None
        ledger.record(session, connection_id=self.connection_id, direction=forward.DIRECTION,
                      outcome="applied", field="comment", link_id=link.id,
                      actor=author, bitbucket_value=str(comment["id"]),
                      old_value=forward._excerpt(old), new_value=forward._excerpt(text),
                      bitbucket_at=parse_time(comment.get("updated_on")),
                      detail=f"Bitbucket comment {comment['id']} was edited; internal note "
                             f"{note.id} updated (Bitbucket sends no webhook for comment edits: "
                             f"found by reconciliation)"
                             + (f"; text cleaned before storing: {cleaned}" if cleaned else ""))
        self.report.comment_edits += 1

    def _deleted(self, session: Session, link: Link, cl: CommentLink) -> None:
        note = session.get(TicketComment, _int(cl.target_comment_id))
        ours = self._from_helpdesk(session, link, cl)
        before = forward._excerpt(note.body) if note is not None else None
        if ours:
            detail = (f"the Bitbucket copy (comment {cl.bitbucket_comment_id}) of helpdesk comment "
                      f"{cl.target_comment_id} was deleted in Bitbucket; the helpdesk comment is kept")
        else:
            if note is not None:
                note.body += DELETED_NOTE.format(cid=cl.bitbucket_comment_id)
            detail = (f"Bitbucket comment {cl.bitbucket_comment_id} was deleted in Bitbucket; internal "
                      f"note {cl.target_comment_id} is kept and marked as deleted (Bitbucket sends no "
                      f"webhook for comment deletions: found by reconciliation)")
        ledger.record(session, connection_id=self.connection_id, direction=forward.DIRECTION,
                      outcome="noop" if ours else "applied", field="comment", link_id=link.id,
                      bitbucket_value=str(cl.bitbucket_comment_id),
                      old_value=before, detail=detail)
        # The pair no longer exists; ending it records the deletion once.
        session.delete(cl)
        self.report.comment_deletions += 1

    @staticmethod
    def _from_helpdesk(session: Session, link: Link, cl: CommentLink) -> bool:
        target = _int(cl.target_comment_id)
        return target is not None and session.scalar(select(OutgoingChange.id).where(
            OutgoingChange.link_id == link.id, OutgoingChange.kind == "comment",
            OutgoingChange.ticket_comment_id == target).limit(1)) is not None

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
        dialect = session.get_bind().dialect.name
        if session.execute(insert_ignoring_duplicates(dialect, Delivery.__table__), row).first():
            return row["id"], "received", True
        existing = session.execute(select(Delivery.id, Delivery.status).where(
            Delivery.connection_id == self.connection_id, Delivery.request_uuid == request_uuid)).one()
        return existing.id, existing.status, False

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
            with transaction() as session:
                started = deliveries.start_run(session, delivery_id)
                status = started.status if started is not None else "missing"
            if status != "received":  # dead-lettered after too many starts
                self.report.deliveries_skipped += 1
                return
        outcomes: list[tuple[str, int]] = []
        linked = False
        for attempt in range(1, PROCESS_ATTEMPTS + 1):
            try:
                with transaction() as session:
                    outcome = forward.process_delivery(session, delivery_id)
                    # Read in the same transaction (after a flush), not in one more.
                    outcomes = list(session.execute(
                        select(LedgerEntry.outcome, func.count()).where(LedgerEntry.delivery_id == delivery_id)
                        .group_by(LedgerEntry.outcome)))
                    linked = new_link is not None and self._link(session, *new_link) is not None
                break
            except RETRYABLE as exc:
                if attempt < PROCESS_ATTEMPTS:
                    log.info("reconcile.process_retry delivery=%s attempt=%d", delivery_id, attempt)
                    continue
                if isinstance(exc, OperationalError):
                    raise  # the database is in trouble: stop; the run ends before its watermark
                    # moves, and the stored delivery is found again by the next run
                # A constraint that fails every time is not a race but bad data or a bug:
                # dead-lettered below, so that one issue cannot stop reconciliation for good.
                self._dead_letter(delivery_id, exc)
                return
            except Exception as exc:  # a bug or bad data: dead-lettered, as the task does
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
        for name, n in outcomes:
            self.report.outcomes[name] += n


    def _dead_letter(self, delivery_id: str, exc: Exception) -> None:
        log.error("reconcile.delivery_failed delivery=%s error=%s", delivery_id, exc.__class__.__name__)
        with transaction() as session:
            d = session.get(Delivery, delivery_id)
            if d is not None and d.status == "received":
                deliveries.fail(session, d, f"{exc.__class__.__name__}: {str(exc).splitlines()[0]}")
        self.report.deliveries_failed += 1
        self.report.errors.append(f"delivery {delivery_id} dead-lettered: {exc.__class__.__name__}")


def _dumps(body: dict) -> str:
    """A synthetic delivery's body. The REST API's text may hold lone surrogates (its JSON is
    parsed by the stdlib, which accepts "\\ud800"): ensure_ascii writes them back as escapes,
    which the worker's json.loads reads and normalize cleans, where orjson (or UTF-8) would
    refuse them and the issue would never be imported."""
    return json.dumps(body, ensure_ascii=True)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _display_name(user: Any) -> str | None:
    if isinstance(user, dict):
        for key in ("display_name", "nickname", "username"):
            if isinstance(user.get(key), str) and user[key]:
                return user[key]
    return None


# --- reconciliation ---------------------------------------------------------------------------

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
    with transaction() as session:
        mark = _watermark(session, conn.id, repo)
        # The comment pass reads from its own watermark: the frequent pass has moved the main
        # one past issues whose comments nobody listed.
        seen_up_to = mark.comments_updated_on if comment_pass else mark.updated_on
        since = (seen_up_to - overlap) if seen_up_to else first_run_start(conn)
        # Reading from below the main watermark leaves no gap behind it: the main one may move.
        covers_main = mark.updated_on is None or since <= mark.updated_on
    scan = IssueScan(importer.client, repo, since=since, pagelen=pagelen)
    pages = scan.pages()
    result = "ok"
    try:
        try:
            for page in pages:
                for issue in page:
                    importer.issue(repo, issue, comments=comments, seen_up_to=seen_up_to)
                report.pages += 1
                _advance(conn.id, repo, page, main=covers_main, comments=comment_pass)
            if comments == "all":
                _scan_linked(importer, conn.id, repo)
                _comments_caught_up(conn.id, repo)
        finally:
            pages.close()
            report.api_calls += scan.calls
    except BitbucketError as exc:
        result = f"{exc.__class__.__name__}: {exc}"
        report.errors.append(f"{repo}: {result}")
        log.warning("reconcile.repo_failed connection=%s repo=%s error=%s", conn.name, repo,
                    exc.__class__.__name__)
        if isinstance(exc, TrackerRemoved):
            from worker.sync.reverse import mark_tracker_removed
            with transaction() as session:
                mark_tracker_removed(session, conn.id)
    with transaction() as session:
        mark = _watermark(session, conn.id, repo)
        mark.runs += 1
        mark.last_run_at = utcnow()
        mark.last_error = None if result == "ok" else result[:2000]
    return result


def _watermark(session: Session, connection_id: int, repo: str) -> ReconcileWatermark:
    mark = session.get(ReconcileWatermark, (connection_id, repo), with_for_update=True)
    if mark is None:
        mark = ReconcileWatermark(connection_id=connection_id, repo=repo, issues_seen=0, runs=0)
        session.add(mark)
        session.flush()
    return mark


def _advance(connection_id: int, repo: str, page: list[dict], *, main: bool = True,
             comments: bool = False) -> None:
    """After a page was processed: move the watermarks to its newest issue (never back)."""
    newest = max((k for k in map(issue_key, page) if k is not None), default=None)
    with transaction() as session:
        mark = _watermark(session, connection_id, repo)
        mark.issues_seen += len(page)
        if newest is None:
            return
        if main and (mark.updated_on is None or newest[0] > mark.updated_on):
            mark.updated_on, mark.issue_id = newest
        if comments and (mark.comments_updated_on is None or newest[0] > mark.comments_updated_on):
            mark.comments_updated_on = newest[0]


def _comments_caught_up(connection_id: int, repo: str) -> None:
    """After a full comment scan: every issue up to the main watermark had its comments listed."""
    with transaction() as session:
        mark = _watermark(session, connection_id, repo)
        if mark.updated_on is not None and (mark.comments_updated_on is None
                                            or mark.comments_updated_on < mark.updated_on):
            mark.comments_updated_on = mark.updated_on


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
    mark = _watermark(session, conn.id, repo)
    moved = False
    if (covered_from is None or covered_from <= (mark.updated_on or first_run_start(conn))) and (
            mark.updated_on is None or covered_to[0] > mark.updated_on):
        mark.updated_on, mark.issue_id = covered_to
        moved = True
    if comments and (covered_from is None or covered_from <= (mark.comments_updated_on or first_run_start(conn))) and (
            mark.comments_updated_on is None or covered_to[0] > mark.comments_updated_on):
        mark.comments_updated_on = covered_to[0]
    return moved


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
        report.stuck_links = reverse.waiting_links(session, cutoff, connection_id)
        waiting = list(session.scalars(select(Delivery.id).where(
            Delivery.connection_id == connection_id, Delivery.status == "received",
            Delivery.received_at <= cutoff).order_by(Delivery.received_at)))
    report.enqueue = list(dict.fromkeys(report.enqueue + waiting))
