"""Backfill: existing issues imported through the engine, streamed page by page, resumable
after an interruption, and idempotent."""
from __future__ import annotations

import gc
import tracemalloc
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from worker.bitbucket.errors import ServerError
from worker.db.helpdesk import Ticket, TicketComment
from worker.db.models import Base, Connection, ConnectionRepo, Delivery, LedgerEntry, Link
from worker.db.session import get_engine, transaction
from worker.db.watermarks import BackfillCursor, ReconcileWatermark
from worker.engine.events import parse_time
from worker.sync.backfill import backfill
from worker.sync.reconcile import reconcile_connection

from .test_reconcile import (REPO, SLUG, WORKSPACE, actor, assert_tickets_match_bitbucket, conn_id, count,
                             gets, notes, quiet_issues, tickets_by_issue)


@pytest.fixture
def h(harness):
    Base.metadata.create_all(get_engine(), tables=[ReconcileWatermark.__table__, BackfillCursor.__table__])
    return harness


def run(h, **kw):
    return backfill(conn_id(), client_factory=h.client_factory, **kw)


def cursor() -> BackfillCursor:
    with transaction() as session:
        return session.get(BackfillCursor, (conn_id(), REPO))


def existing_issues(h, n: int) -> list[dict]:
    """Issues that were there before us: a few of them edited and commented on."""
    made = quiet_issues(h, n, priority="critical", kind="task")
    h.state.faults.drop_webhooks(times=6)
    for issue in made[:3]:
        h.state.update_issue(WORKSPACE, SLUG, issue["id"], {"state": "resolved"}, actor(h))
        h.state.add_comment(WORKSPACE, SLUG, issue["id"], {"content": {"raw": f"Note on {issue['id']}"}},
                            actor(h))
    assert h.state.wait_for_deliveries(10)
    assert h.process_webhooks() == []
    return made


def test_existing_issues_and_their_comments_are_imported_page_by_page(h):
    existing_issues(h, 250)
    log, at_page_end = h.state.request_log, []

    def progress(page):
        listings = [r for r in log if r.method == "GET" and r.path.endswith("/issues")]
        at_page_end.append((page.page, len(listings), page.issues, page.report.issues_seen))

    mark = len(log)
    report = run(h, page_callback=progress)

    assert count(Ticket) == count(Link) == report.links_created == 250
    assert_tickets_match_bitbucket(h)
    for issue_id in (1, 2, 3):
        assert [n.body for n in notes(tickets_by_issue()[issue_id].id)] == [f"Note on {issue_id}"]
    assert report.comment_scans == 3 and report.comments_stored == 3
    # Streaming: when page k has been processed, exactly k listings were fetched (the next
    # page is not read before the current one is done), and no page holds more than 100.
    # Keyset pages: 100, then 99 new after the one re-read at each page boundary.
    assert at_page_end == [(1, 1, 100, 100), (2, 2, 99, 199), (3, 3, 51, 250)]
    # Three listings and one comment listing per touched issue, no more.
    assert len(gets(h, mark)) == report.api_calls == 3 + 3
    assert cursor().state == "done" and cursor().issues_seen == 250
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.status != "processed")) == 0


def test_a_second_run_creates_nothing(h):
    existing_issues(h, 30)
    run(h)
    before = (count(Delivery), count(LedgerEntry), count(Ticket), count(TicketComment), count(Link))
    again = run(h)
    assert (again.deliveries_stored, again.links_created, again.comments_stored) == (0, 0, 0)
    assert again.up_to_date == again.issues_seen == 30 and again.resumed == {}
    assert (count(Delivery), count(LedgerEntry), count(Ticket), count(TicketComment), count(Link)) == before


def test_issues_already_linked_by_webhooks_are_left_alone(h):
    for i in range(3):
        h.api("POST", "/issues", json={"title": f"Known {i}"})
    h.process_webhooks()
    quiet_issues(h, 5)
    report = run(h)
    assert (report.up_to_date, report.links_created, report.deliveries_stored) == (3, 5, 5)
    assert count(Ticket) == 8


def test_since_limits_the_import_to_recently_updated_issues(h):
    made = quiet_issues(h, 10)
    since = parse_time(made[6]["updated_on"])
    report = run(h, since=since)
    assert report.issues_seen == 4 and sorted(tickets_by_issue()) == [7, 8, 9, 10]


def test_an_interrupted_backfill_continues_where_it_stopped(h):
    quiet_issues(h, 250)

    def fail_after_first_page(page):
        if page.page == 1:  # Bitbucket goes down: every retry of the next listing fails
            h.state.faults.add(status=500, times=5, method="GET", path=r"/issues$")

    with pytest.raises(ServerError):
        run(h, page_callback=fail_after_first_page)
    assert count(Ticket) == 100
    assert (cursor().state, cursor().issue_id, cursor().issues_seen) == ("running", 100, 100)

    report = run(h)
    assert report.resumed and report.issues_seen == 150
    assert count(Ticket) == count(Link) == 250
    with transaction() as session:
        uuids = list(session.scalars(select(Delivery.request_uuid)))
        assert session.scalar(select(func.count(func.distinct(Link.target_id)))) == 250
    assert len(uuids) == len(set(uuids)) == 250
    assert cursor().state == "done" and cursor().issues_seen == 250
    assert_tickets_match_bitbucket(h)


def test_a_page_callback_that_raises_once_loses_nothing(h):
    quiet_issues(h, 45)
    calls = []

    def flaky(page):
        calls.append(page.page)
        if len(calls) == 2:
            raise RuntimeError("operator pressed ^C")

    with pytest.raises(RuntimeError):
        run(h, page_callback=flaky, pagelen=10)
    # Two pages committed: 10, then 9 new after the one re-read at the page boundary.
    assert count(Ticket) == 19 and cursor().issue_id == 19
    report = run(h, page_callback=flaky, pagelen=10)
    assert report.issues_seen == 26 and count(Ticket) == count(Delivery) == 45
    assert run(h, pagelen=10).deliveries_stored == 0


def test_resuming_does_not_read_again_the_repositories_already_done(h):
    h.state.create_repository("acme", "gadgets")
    with transaction() as session:
        session.add(ConnectionRepo(connection_id=conn_id(), full_name="acme/gadgets"))
    h.state.faults.drop_webhooks(times=5)
    for i in range(5):
        h.state.create_issue("acme", "gadgets", {"title": f"Gadget {i}"}, actor(h))
    quiet_issues(h, 30)

    def stop_in_widgets(page):
        if page.repo == REPO and page.page == 2:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run(h, page_callback=stop_in_widgets, pagelen=10)
    mark = len(h.state.request_log)
    report = run(h, pagelen=10)
    assert report.repos == {"acme/gadgets": "done before", REPO: "done"} and report.resumed
    assert not any("gadgets" in r.path for r in h.state.request_log[mark:])
    assert count(Ticket) == 35
    again = run(h, pagelen=10)  # all done: a new call starts over, and creates nothing
    assert again.repos == {"acme/gadgets": "done", REPO: "done"} and again.deliveries_stored == 0


def test_an_issue_updated_during_the_scan_does_not_make_it_skip_another(h):
    made = quiet_issues(h, 25)

    def meanwhile(page):
        if page.page == 1:  # an issue already read moves to the end of the order
            h.state.faults.drop_webhooks(times=1)
            h.state.update_issue(WORKSPACE, SLUG, made[2]["id"], {"priority": "blocker"}, actor(h))

    report = run(h, page_callback=meanwhile, pagelen=10)
    # Offset paging would now skip issue 11 (everything after issue 3 moved up one place);
    # keyset paging reads on from the last issue it saw, and then issue 3 once more.
    assert sorted(tickets_by_issue()) == list(range(1, 26))
    assert report.issues_seen == 26 and tickets_by_issue()[3].priority == "urgent"


class LazyBitbucket:
    """A Bitbucket with `total` never-touched issues, made up as they are read (so the only
    memory that can grow with `total` is the code under test's)."""

    def __init__(self, total: int):
        self.total = total
        self.start = datetime(2025, 1, 1, tzinfo=timezone.utc)

    def _issue(self, i: int) -> dict:
        when = (self.start + timedelta(seconds=i)).isoformat(timespec="microseconds")
        return {"type": "issue", "id": i + 1, "title": f"Issue {i + 1}", "state": "new", "kind": "bug",
                "priority": "major", "assignee": None, "reporter": None, "created_on": when,
                "updated_on": when, "content": {"raw": "x" * 20_000, "markup": "markdown", "html": ""},
                "links": {"html": {"href": f"https://bitbucket.test/{REPO}/issues/{i + 1}"}}}

    def iter_issues(self, repo, q=None, sort=None, pagelen=100):
        first = 0
        if q:
            since = parse_time(q.split(">=", 1)[1].strip())
            first = max(0, int((since - self.start).total_seconds()))
        for i in range(first, self.total):
            yield self._issue(i)

    def iter_comments(self, repo, issue_id, pagelen=100):
        return iter(())


def _peak(h, total: int) -> int:
    with transaction() as session:
        for model in (Delivery, LedgerEntry, Link, Ticket):
            session.query(model).delete()
        session.query(BackfillCursor).delete()
    fake = LazyBitbucket(total)
    gc.collect()
    tracemalloc.start()
    try:
        # Collecting garbage after each page leaves out the cyclic garbage that builds up
        # between the interpreter's own collections (a session class per transaction):
        # what remains is what the backfill holds on to.
        report = backfill(conn_id(), client_factory=lambda _id: fake, pagelen=10,
                          page_callback=lambda page: gc.collect())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report.links_created == total
    return peak


def test_memory_does_not_grow_with_the_number_of_issues(h):
    _peak(h, 10)  # warm caches (SQL compilation, imports) first
    small, large = _peak(h, 30), _peak(h, 120)
    # Four times the issues; a backfill that kept them (or their deliveries) would need far
    # more. Pages are 10 issues of ~20 KB either way.
    assert large < small * 1.3, (small, large)


def test_a_finished_backfill_moves_the_reconciliation_watermark(h):
    made = quiet_issues(h, 20)
    with transaction() as session:
        conn = session.scalars(select(Connection)).one()
        conn.created_at = conn.created_at + timedelta(hours=1)  # the issues predate the connection
    run(h)
    with transaction() as session:
        mark = session.get(ReconcileWatermark, (conn_id(), REPO))
    assert (mark.updated_on, mark.issue_id) == (parse_time(made[-1]["updated_on"]), made[-1]["id"])
    mark = len(h.state.request_log)
    report = reconcile_connection(conn_id(), client_factory=h.client_factory, overlap=timedelta(0))
    assert len(gets(h, mark)) == 1 and report.issues_seen == 1 and report.deliveries_stored == 0


@pytest.mark.parametrize("comments,seeded", [("all", True), ("none", False)])
def test_a_backfill_that_listed_comments_moves_the_comment_pass_watermark(h, comments, seeded):
    made = quiet_issues(h, 5)
    with transaction() as session:
        conn = session.scalars(select(Connection)).one()
        conn.created_at = conn.created_at + timedelta(hours=1)
    run(h, comments=comments)
    with transaction() as session:
        mark = session.get(ReconcileWatermark, (conn_id(), REPO))
    assert mark.comments_updated_on == (parse_time(made[-1]["updated_on"]) if seeded else None)
    # Nothing touched since: the comment pass reads one page and lists no comments.
    report = reconcile_connection(conn_id(), client_factory=h.client_factory, comments="changed",
                                  overlap=timedelta(0))
    assert (report.comment_scans, report.api_calls) == (0, 1)
