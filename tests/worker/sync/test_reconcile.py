"""Reconciliation: what the webhooks missed reaches the helpdesk through the same engine, at a
bounded API cost, and running it again changes nothing."""
from __future__ import annotations

import math
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError, OperationalError

from worker import connections
from worker.bitbucket.errors import ServerError
from worker.db.helpdesk import Ticket, TicketComment
from worker.db.models import Base, CommentLink, Connection, ConnectionRepo, Delivery, LedgerEntry, Link, OutboxEntry
from worker.db.session import get_engine, transaction
from worker.db.watermarks import BackfillCursor, ReconcileWatermark
from worker.sync import push
from worker.sync.comment_scan import DELETED_NOTE
from worker.sync.reconcile import reconcile_connection

REPO = "acme/widgets"
WORKSPACE, SLUG = REPO.split("/")


@pytest.fixture
def h(harness):
    """The sync harness, and the tables reconciliation and backfill keep (created here if
    the migrated schema does not have them yet; a no-op once it does)."""
    Base.metadata.create_all(get_engine(), tables=[ReconcileWatermark.__table__, BackfillCursor.__table__])
    return harness


# --- helpers ----------------------------------------------------------------------------------

def conn_id() -> int:
    with transaction() as session:
        return session.scalar(select(Connection.id).where(Connection.name == "acme"))


def actor(h):
    return h.state.principal_for_basic("dev@acme.example")


def quiet_issues(h, count: int, **fields) -> list[dict]:
    """Issues created in Bitbucket whose webhooks are all lost (straight into the simulator's
    state: quick, and not in the request log)."""
    h.state.faults.drop_webhooks(times=count)
    made = [h.state.create_issue(WORKSPACE, SLUG, {"title": f"Lost {i}", **fields}, actor(h))
            for i in range(count)]
    assert h.state.wait_for_deliveries(10)
    return made


def lost(h, method: str, path: str, **kw) -> dict:
    """One API edit whose webhook is lost."""
    h.state.faults.drop_webhooks(times=1)
    result = h.api(method, path, **kw)
    assert h.state.wait_for_deliveries(10)
    return result


def reconcile(h, **kw):
    return reconcile_connection(conn_id(), client_factory=h.client_factory, **kw)


def gets(h, start: int) -> list:
    return [r for r in h.state.request_log[start:] if r.method == "GET"]


def tickets_by_issue() -> dict[int, Ticket]:
    with transaction() as session:
        return {link.bitbucket_issue_id: session.get(Ticket, int(link.target_id))
                for link in session.scalars(select(Link))}


def notes(ticket_id: int) -> list[TicketComment]:
    with transaction() as session:
        return list(session.scalars(select(TicketComment).where(TicketComment.ticket_id == ticket_id)
                                    .order_by(TicketComment.id)))


def count(model) -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(model))


def assert_tickets_match_bitbucket(h) -> None:
    with transaction() as session:
        tables = connections.tables_for(session.scalars(select(Connection)).one())
    remote = {i["id"]: i for i in h.state.list_issues(WORKSPACE, SLUG)}
    local = tickets_by_issue()
    assert set(local) == set(remote)
    for issue_id, issue in remote.items():
        t = local[issue_id]
        assert t.title == issue["title"]
        assert t.description == (issue["content"]["raw"] or "")
        assert t.status == tables.to_target("status", issue["state"])
        assert t.priority == tables.to_target("priority", issue["priority"])
        assert t.type == tables.to_target("type", issue["kind"])
        assert t.assignee == (issue["assignee"] or {}).get("display_name")


def watermark() -> ReconcileWatermark:
    with transaction() as session:
        return session.get(ReconcileWatermark, (conn_id(), REPO))


# --- what webhooks missed ---------------------------------------------------------------------

def test_lost_webhooks_are_reconciled_through_the_engine(h):
    synced = h.api("POST", "/issues", json={"title": "Synced", "priority": "major"})
    commented = h.api("POST", "/issues", json={"title": "Will get a comment"})
    h.process_webhooks()

    lost(h, "PUT", f"/issues/{synced['id']}", json={"priority": "critical", "state": "resolved",
                                                     "content": {"raw": "Root cause found."}})
    lost(h, "POST", "/issues", json={"title": "Never announced", "kind": "task", "priority": "blocker"})
    lost(h, "POST", f"/issues/{commented['id']}/comments", json={"content": {"raw": "Seen on 2.3 too."}})
    assert h.process_webhooks() == []  # nothing reached us

    # The 5-minute pass: issues only, one call, and every field converges.
    mark = len(h.state.request_log)
    report = reconcile(h)
    assert report.errors == []
    assert report.api_calls == len(gets(h, mark)) == 1
    assert_tickets_match_bitbucket(h)
    assert notes(tickets_by_issue()[commented["id"]].id) == []
    assert (report.deliveries_stored, report.links_created, report.comments_stored) == (3, 1, 0)
    assert report.issues_seen == 3 and report.up_to_date == 0
    assert report.applied >= 3 and report.outcomes["conflict"] == 0
    # The comment pass: the listing again, plus the comments of the two touched issues.
    mark = len(h.state.request_log)
    comments = reconcile(h, comments="changed")
    assert comments.api_calls == len(gets(h, mark)) == 3 and comments.comment_scans == 2
    [note] = notes(tickets_by_issue()[commented["id"]].id)
    assert (note.body, note.internal) == ("Seen on 2.3 too.", True)
    assert (comments.deliveries_stored, comments.comments_stored) == (1, 1)
    with transaction() as session:
        synthetic = list(session.scalars(select(Delivery).where(Delivery.request_uuid.like("reconcile:%"))))
        assert {d.status for d in synthetic} == {"processed"}
        # Every decision names the synthetic delivery it came from.
        entries = session.scalars(select(LedgerEntry).where(
            LedgerEntry.delivery_id.in_([d.id for d in synthetic]))).all()
    assert {e.outcome for e in entries} >= {"applied"}
    assert watermark().updated_on.isoformat(timespec="microseconds") == max(
        i["updated_on"] for i in h.state.list_issues(WORKSPACE, SLUG))


def test_running_reconcile_again_changes_nothing_and_stores_nothing(h):
    issue = h.api("POST", "/issues", json={"title": "Once"})
    h.process_webhooks()
    lost(h, "PUT", f"/issues/{issue['id']}", json={"kind": "proposal"})
    quiet_issues(h, 3)
    first = reconcile(h)
    assert first.deliveries_stored == 4

    before = (count(Delivery), count(LedgerEntry), count(Ticket), count(TicketComment),
              [(t.id, t.title, t.status, t.priority, t.type) for t in tickets_by_issue().values()])
    mark = len(h.state.request_log)
    again = reconcile(h)
    assert (again.deliveries_stored, again.deliveries_processed, again.links_created) == (0, 0, 0)
    assert again.up_to_date == again.issues_seen == 4  # re-read within the overlap, skipped
    assert (count(Delivery), count(LedgerEntry), count(Ticket), count(TicketComment),
            [(t.id, t.title, t.status, t.priority, t.type) for t in tickets_by_issue().values()]) == before
    assert len(gets(h, mark)) == again.api_calls == 1
    assert h.process_webhooks() == []


def test_webhook_arriving_after_reconcile_has_no_second_effect(h):
    issue = h.api("POST", "/issues", json={"title": "Late"})
    h.process_webhooks()
    h.api("PUT", f"/issues/{issue['id']}", json={"priority": "blocker"})  # webhook stored, not yet processed
    assert h.state.wait_for_deliveries(10)
    report = reconcile(h)
    assert report.deliveries_stored == 1 and tickets_by_issue()[issue["id"]].priority == "urgent"
    ledger_before = count(LedgerEntry)
    h.process_webhooks()  # the real webhook, processed after the reconciled copy
    applied_after = [e for e in _ledger_since(ledger_before) if e.outcome == "applied"]
    assert applied_after == []
    assert tickets_by_issue()[issue["id"]].priority == "urgent"


def _ledger_since(n: int) -> list[LedgerEntry]:
    with transaction() as session:
        return list(session.scalars(select(LedgerEntry).order_by(LedgerEntry.id).offset(n)))


# --- API cost ---------------------------------------------------------------------------------

def test_nothing_changed_costs_one_call_per_repository(h):
    h.state.create_repository("acme", "gadgets")
    with transaction() as session:
        session.add(ConnectionRepo(connection_id=conn_id(), full_name="acme/gadgets"))
    h.api("POST", "/issues", json={"title": "Quiet"})
    h.process_webhooks()
    h.state.faults.drop_webhooks(times=2)
    for title in ("Gadget one", "Gadget two"):  # no hook on this repository at all
        h.state.create_issue("acme", "gadgets", {"title": title}, actor(h))
    first = reconcile(h)
    assert first.links_created == 2 and first.repos == {REPO: "ok", "acme/gadgets": "ok"}

    mark = len(h.state.request_log)
    report = reconcile(h)
    calls = gets(h, mark)
    assert len(calls) == report.api_calls == 2
    assert sorted(c.path for c in calls) == [f"/2.0/repositories/acme/gadgets/issues",
                                             f"/2.0/repositories/{REPO}/issues"]
    assert report.deliveries_stored == 0


@pytest.mark.parametrize("changed", [150])
def test_changed_issues_cost_one_call_per_page(h, changed):
    h.api("POST", "/issues", json={"title": "Anchor"})
    h.process_webhooks()
    reconcile(h)
    quiet_issues(h, changed)

    mark = len(h.state.request_log)
    report = reconcile(h, overlap=timedelta(0))
    calls = gets(h, mark)
    # Keyset pages: 100, then 99 new after the one re-read at the page boundary.
    assert len(calls) == report.api_calls == 1 + max(0, (changed - 1) // 99)
    assert len(calls) <= 1 + math.ceil(changed / 100)
    assert all(c.path.endswith("/issues") for c in calls)   # no comment listings: never touched
    assert report.deliveries_stored == report.links_created == changed
    assert count(Ticket) == changed + 1

    mark = len(h.state.request_log)
    again = reconcile(h, overlap=timedelta(0))
    assert len(gets(h, mark)) == again.api_calls == 1
    assert again.deliveries_stored == 0


# --- the watermark ----------------------------------------------------------------------------

def test_issue_updated_in_the_same_microsecond_as_the_watermark_is_not_lost(h):
    first, second = quiet_issues(h, 2)
    reconcile(h, overlap=timedelta(0))
    w = watermark()
    assert (w.updated_on.isoformat(timespec="microseconds"), w.issue_id) == (second["updated_on"], second["id"])

    # Another issue changes, and Bitbucket stamps it with the very same microsecond (two
    # servers, one clock tick), with no webhook.
    with h.state.lock:
        item = h.state._repos[REPO].issues[first["id"]]
        item.priority, item.updated_on = "blocker", w.updated_on
    report = reconcile(h, overlap=timedelta(0))
    assert report.deliveries_stored == 1
    assert tickets_by_issue()[first["id"]].priority == "urgent"


def test_a_failed_page_keeps_the_watermark_and_the_next_run_finishes(h):
    quiet_issues(h, 25)

    class FlakyAfterFirstPage:
        def __init__(self, client):
            self.client, self.queries = client, 0

        def iter_issues(self, *args, **kw):
            self.queries += 1
            if self.queries == 2:
                raise ServerError("Service unavailable", status=503, method="GET")
            return self.client.iter_issues(*args, **kw)

        def __getattr__(self, name):
            return getattr(self.client, name)

    flaky = FlakyAfterFirstPage(h.client)
    report = reconcile_connection(conn_id(), client_factory=lambda _id: flaky, pagelen=10)
    assert report.repos[REPO].startswith("ServerError") and report.errors
    assert count(Link) == 10 and watermark().issue_id == 10 and watermark().last_error

    report = reconcile(h, pagelen=10)
    assert report.errors == [] and watermark().last_error is None
    assert count(Link) == count(Ticket) == 25
    with transaction() as session:
        uuids = list(session.scalars(select(Delivery.request_uuid)))
    assert len(uuids) == len(set(uuids)) == 25
    assert_tickets_match_bitbucket(h)


def test_first_run_does_not_import_what_predates_the_connection(h):
    quiet_issues(h, 2)
    with transaction() as session:
        conn = session.scalars(select(Connection)).one()
        conn.created_at = conn.created_at + timedelta(hours=1)  # made after those issues
    report = reconcile(h)
    assert report.issues_seen == 0 and count(Ticket) == 0  # that is the backfill's job


# --- comments ---------------------------------------------------------------------------------

def test_comment_edits_and_deletions_are_seen_by_a_full_comment_scan(h):
    issue = h.api("POST", "/issues", json={"title": "Chatty"})
    h.process_webhooks()
    kept = h.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "First take."}})
    gone = h.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "Wrong issue, sorry."}})
    h.process_webhooks()
    ticket = tickets_by_issue()[issue["id"]]
    # An agent's reply goes to Bitbucket (with its invisible marker): not an edit of ours to undo.
    h.web.post(f"/api/tickets/{ticket.id}/comments", json={"body": "Thanks, looking.", "author": "Ana"})
    push.push_link(1, client_factory=h.client_factory)
    h.process_webhooks()
    assert [n.body for n in notes(ticket.id)] == ["First take.", "Wrong issue, sorry.", "Thanks, looking."]
    assert reconcile(h).comments_stored == 0  # all in sync; this run sets the watermark

    # No webhook exists for either, and the issue's updated_on does not move.
    h.api("PUT", f"/issues/{issue['id']}/comments/{kept['id']}", json={"content": {"raw": "Second take."}})
    h.api("DELETE", f"/issues/{issue['id']}/comments/{gone['id']}")
    assert h.process_webhooks() == []

    cheap = reconcile(h)  # the limit: an unchanged issue's comments are not listed again
    assert (cheap.comment_scans, cheap.comment_edits, cheap.comment_deletions) == (0, 0, 0)

    mark = len(h.state.request_log)
    full = reconcile(h, comments="all")
    assert (full.comment_scans, full.comment_edits, full.comment_deletions) == (1, 1, 1)
    assert full.api_calls == len(gets(h, mark)) == 2   # the issue list + one comment listing
    bodies = [n.body for n in notes(ticket.id)]
    assert bodies == ["Second take.", "Wrong issue, sorry." + DELETED_NOTE.format(cid=gone["id"]),
                      "Thanks, looking."]
    with transaction() as session:
        entries = list(session.scalars(select(LedgerEntry).where(
            LedgerEntry.field == "comment", LedgerEntry.delivery_id.is_(None),
            LedgerEntry.direction == "forward")))
        assert session.scalar(select(func.count()).select_from(CommentLink)) == 2
    edit = next(e for e in entries if "edited" in e.detail)
    assert (edit.outcome, edit.old_value, edit.new_value) == ("applied", "First take.", "Second take.")
    assert any("deleted" in e.detail and e.bitbucket_value == str(gone["id"]) for e in entries)

    again = reconcile(h, comments="all")
    assert (again.comment_edits, again.comment_deletions, again.comments_stored) == (0, 0, 0)
    assert [n.body for n in notes(ticket.id)] == bodies


@pytest.mark.parametrize("mode,found", [("changed", True), ("missed", False), ("none", False)])
def test_comment_lost_before_a_later_webhook_of_its_issue(h, mode, found):
    issue = h.api("POST", "/issues", json={"title": "Two events"})
    h.process_webhooks()
    reconcile(h, comments="changed")
    lost(h, "POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "Lost words."}})
    h.api("PUT", f"/issues/{issue['id']}", json={"priority": "minor"})  # this one arrives
    h.process_webhooks()  # the link now holds the issue's newest version
    # The 5-minute pass runs first and moves its watermark past the issue.
    assert (reconcile(h).comment_scans, reconcile(h).api_calls) == (0, 1)

    mark = len(h.state.request_log)
    # The comment pass ("changed") reads from its own watermark and lists the comments of an
    # issue touched since it last ran; "missed" lists only those we were behind on.
    report = reconcile(h, comments=mode)
    assert (report.comment_scans, report.comments_stored) == (int(found), int(found))
    assert report.api_calls == len(gets(h, mark)) == 1 + found
    assert [n.body for n in notes(tickets_by_issue()[issue["id"]].id)] == (["Lost words."] if found else [])
    again = reconcile(h, comments=mode)  # re-read within the overlap: not listed a second time
    assert (again.comment_scans, again.api_calls) == (0, 1)


def test_the_issue_pass_costs_one_call_per_hundred_changed_issues_whatever_was_lost(h):
    """Comments are listed per issue, so the frequent pass lists none: its cost is the issue
    listing alone, even when every change's webhook was lost."""
    issues = [h.api("POST", "/issues", json={"title": f"Issue {n}"}) for n in range(3)]
    h.process_webhooks()
    reconcile(h, comments="changed")
    for issue in issues:
        lost(h, "POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": f"On {issue['id']}"}})
        lost(h, "PUT", f"/issues/{issue['id']}", json={"priority": "blocker"})

    mark = len(h.state.request_log)
    report = reconcile(h)
    assert report.api_calls == len(gets(h, mark)) == 1 and report.comment_scans == 0
    assert_tickets_match_bitbucket(h)
    comments = reconcile(h, comments="changed")  # one listing, one call per touched issue
    assert comments.api_calls == 1 + 3 and comments.comments_stored == 3
    assert all(len(notes(t.id)) == 1 for t in tickets_by_issue().values())


# --- the helpdesk side and failures -----------------------------------------------------------

def test_stuck_outbox_rows_are_reported_for_requeueing(h):
    issue = h.api("POST", "/issues", json={"title": "Edited here"})
    h.process_webhooks()
    ticket = tickets_by_issue()[issue["id"]]
    assert h.web.patch(f"/api/tickets/{ticket.id}", json={"priority": "high"}).status_code == 200
    assert reconcile(h).stuck_links == []  # young: its task is surely on its way
    with transaction() as session:
        row = session.scalars(select(OutboxEntry)).one()
        row.created_at -= timedelta(hours=1)
        link_id = row.link_id
    assert reconcile(h).stuck_links == [link_id]
    assert push.push_link(link_id, client_factory=h.client_factory).startswith("pushed")
    assert reconcile(h).stuck_links == []


def _break_issue_2(monkeypatch, exc: Exception):
    from worker.sync import forward
    real = forward.process_delivery

    def broken_for_issue_2(session, delivery_id):
        if session.get(Delivery, delivery_id).issue_key == f"{REPO}#2":
            raise exc
        return real(session, delivery_id)

    monkeypatch.setattr(forward, "process_delivery", broken_for_issue_2)
    return lambda: monkeypatch.setattr(forward, "process_delivery", real)


@pytest.mark.parametrize("exc", [RuntimeError("bad data"),
                                 IntegrityError("INSERT", {}, Exception("UNIQUE constraint failed: bad data"))],
                         ids=["bug", "constraint"])
def test_a_delivery_that_fails_is_dead_lettered_and_the_rest_go_on(h, monkeypatch, exc):
    quiet_issues(h, 3)
    restore = _break_issue_2(monkeypatch, exc)
    report = reconcile(h)
    assert (report.deliveries_failed, report.deliveries_processed) == (1, 2)
    assert sorted(tickets_by_issue()) == [1, 3] and report.errors
    restore()
    with transaction() as session:
        failed = session.scalars(select(Delivery).where(Delivery.status == "failed")).one()
    assert "bad data" in failed.error
    assert h.web.post(f"/api/deliveries/{failed.id}/replay").status_code == 200
    h.process_webhooks()
    assert sorted(tickets_by_issue()) == [1, 2, 3]


def test_a_database_in_trouble_stops_the_run_and_the_next_run_resumes(h, monkeypatch):
    quiet_issues(h, 3)
    restore = _break_issue_2(monkeypatch, OperationalError("UPDATE", {}, Exception("database is locked")))
    with pytest.raises(OperationalError):
        reconcile(h)
    assert sorted(tickets_by_issue()) == [1] and watermark().updated_on is None
    restore()
    report = reconcile(h)
    assert sorted(tickets_by_issue()) == [1, 2, 3]
    # Issue 2's delivery was stored by the first run and is processed now, not stored again.
    assert (report.deliveries_stored, report.deliveries_processed) == (1, 2)
    with transaction() as session:
        assert session.scalar(select(Delivery.runs).where(Delivery.issue_key == f"{REPO}#2")) == 2


def test_removed_issue_tracker_is_reported_not_retried(h):
    quiet_issues(h, 1)
    h.state.remove_tracker(REPO)
    report = reconcile(h)
    assert "TrackerRemoved" in report.repos[REPO]
    with transaction() as session:
        assert session.scalars(select(Connection)).one().tracker_removed_at is not None
    mark = len(h.state.request_log)
    report = reconcile(h)
    assert gets(h, mark) == [] and report.errors


def test_unknown_comment_mode_is_refused(h):
    with pytest.raises(ValueError, match="comments"):
        reconcile(h, comments="some")


# --- hostile text from the REST API -----------------------------------------------------------

def raw_api(h, method: str, path: str, raw: bytes) -> dict:
    """An API call whose JSON body is sent as written (a lone surrogate escape cannot be made
    by json= from a str that UTF-8 cannot encode)."""
    return h.api(method, path, content=raw, headers={"Content-Type": "application/json"})


def test_an_issue_whose_text_the_receiver_refused_is_imported_cleaned(h):
    # The webhook carries a lone surrogate: refused at the door (400), so reconciliation is
    # what brings the issue in, from the REST API, whose JSON the stdlib reads as it is.
    issue = raw_api(h, "POST", "/issues", b'{"title": "Lone \\ud800 and \\u0000NUL", '
                                          b'"content": {"raw": "\\u202eRTL \\udc00"}}')
    assert h.process_webhooks() == []
    report = reconcile(h)
    assert (report.deliveries_processed, report.deliveries_failed, report.errors) == (1, 0, [])
    ticket = tickets_by_issue()[issue["id"]]
    assert (ticket.title, ticket.description) == ("Lone \ufffd and NUL", "\u202eRTL \ufffd")
    with transaction() as session:
        [delivery] = session.scalars(select(Delivery)).all()
        assert delivery.status == "processed" and delivery.body.isascii()  # escapes, as received
        details = session.scalars(select(LedgerEntry.detail).where(
            LedgerEntry.delivery_id == delivery.id, LedgerEntry.detail.like("text cleaned%"))).all()
    assert details == ["text cleaned before storing: title: 1 NUL character removed; 1 unpaired "
                       "surrogate replaced with U+FFFD; description: 1 unpaired surrogate replaced "
                       "with U+FFFD"]
    assert reconcile(h).deliveries_stored == 0  # held at its version: nothing again


def test_a_comment_edited_to_hostile_text_updates_the_note_cleaned_once(h):
    issue = h.api("POST", "/issues", json={"title": "Chatty"})
    comment = h.api("POST", f"/issues/{issue['id']}/comments", json={"content": {"raw": "First."}})
    h.process_webhooks()
    ticket = tickets_by_issue()[issue["id"]]
    reconcile(h)
    raw_api(h, "PUT", f"/issues/{issue['id']}/comments/{comment['id']}",
            b'{"content": {"raw": "Second\\u0000 take \\ud83d\\ude00 \\udfff \\u200f"}}')

    full = reconcile(h, comments="all")
    assert (full.comment_edits, full.deliveries_failed, full.errors) == (1, 0, [])
    [note] = notes(ticket.id)
    assert note.body == "Second take \U0001F600 \ufffd \u200f"
    with transaction() as session:
        edit = session.scalars(select(LedgerEntry).where(LedgerEntry.detail.like("%was edited%"))).one()
    assert edit.new_value == "Second take \U0001F600 \ufffd \u200f"
    assert edit.detail.endswith("; text cleaned before storing: comment: 1 NUL character removed; "
                                "1 unpaired surrogate replaced with U+FFFD")
    # The note holds the cleaned text, which is what the next scan compares: no edit again.
    assert reconcile(h, comments="all").comment_edits == 0
