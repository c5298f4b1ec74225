"""Races pinned down step by step: our write's webhook arriving before our own commit, a crash
between a remote write and the local commit, two pushes of one link overlapping (the first held
inside its remote call), and an escalation's link made by its webhook."""
from __future__ import annotations

import os
import threading

import httpx2
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from simulator.app import create_app as create_simulator
from tests.worker.sync.conftest import REPO, SIM, TOKEN, in_thread, let_claims_lapse
from worker.bitbucket.auth import ApiTokenAuth
from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.credentials import parse_api_token
from worker.bitbucket.errors import BitbucketError
from worker.db import ledger
from worker.db.helpdesk import Ticket, TicketComment
from worker.db.models import CommentLink, Connection, LedgerEntry, Link, OutboxEntry, Shadow, utcnow
from worker.db.session import transaction
from worker.engine.markers import ticket_marker
from worker.sync import claims, escalate, outbox, push, reverse, reverse_comments


def _new_linked_ticket(h) -> tuple[dict, dict]:
    issue = h.api("POST", "/issues", json={"title": "Race", "priority": "major"})
    h.process_webhooks()
    ticket = h.web.get("/api/tickets", query_string={"connection": "acme"}).json["tickets"][0]
    return issue, ticket


def _ledger(outcome: str | None = None) -> list[LedgerEntry]:
    with transaction() as session:
        query = select(LedgerEntry).order_by(LedgerEntry.id)
        if outcome:
            query = query.where(LedgerEntry.outcome == outcome)
        return list(session.scalars(query))


def test_echo_that_arrives_before_our_commit_changes_nothing(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    assert h.web.patch(f"/api/tickets/{ticket['id']}", json={"status": "solved", "priority": "high"}).status_code == 200

    with transaction() as session:
        plan = reverse.plan_fields(session, 1)
    h.client.post_change(plan.repo, plan.issue_id, plan.change_body())
    # The webhook of our own write is processed before we record the write.
    h.process_webhooks()
    echoes = {e.field for e in _ledger("echo")}
    assert echoes == {"status", "priority"}
    after_echo = h.web.get(f"/api/tickets/{ticket['id']}").json
    assert (after_echo["status"], after_echo["priority"]) == ("solved", "high")

    with transaction() as session:
        again = reverse.finish_fields(session, plan, {"created_on": issue["updated_on"]})
    assert again is False
    with transaction() as session:
        pending = session.scalar(select(func.count()).select_from(OutboxEntry).where(
            OutboxEntry.state.in_(("pending", "sending"))))
    assert pending == 0
    remote = h.api("GET", f"/issues/{issue['id']}")
    assert (remote["state"], remote["priority"]) == ("resolved", "critical")
    # Exactly one write reached Bitbucket for the edit.
    assert len([r for r in h.state.request_log if r.method == "POST" and r.path.endswith("/changes")]) == 1


def test_crash_between_posting_a_comment_and_recording_it_never_duplicates(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    r = h.web.post(f"/api/tickets/{ticket['id']}/comments", json={"body": "Fix is rolling out.", "author": "Ana"})
    assert r.status_code == 201

    with transaction() as session:
        [item] = reverse_comments.plan_comments(session, 1)
    h.client.create_comment(item.repo, item.issue_id, item.body)
    # ... and the worker dies here, before finish_comment. While its claim lasts, another
    # attempt leaves the comment alone (the worker might still be posting it):
    assert push.push_link(1, client_factory=h.client_factory) == "nothing to push"
    # Once the claim has lapsed, the task that runs again resumes it:
    assert let_claims_lapse() == 1
    outcome = push.push_link(1, client_factory=h.client_factory)
    assert "posted" in outcome
    h.process_webhooks()

    comments = [c for c in h.api("GET", f"/issues/{issue['id']}/comments")["values"] if c["content"]["raw"]]
    assert len(comments) == 1
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(CommentLink)) == 1
        assert session.scalar(select(func.count()).select_from(TicketComment)) == 1
    assert [e.outcome for e in _ledger() if e.field == "comment" and e.direction == "forward"] == ["echo"]


def test_comment_webhook_that_beats_our_commit_repairs_the_link_instead_of_noting_twice(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    h.web.post(f"/api/tickets/{ticket['id']}/comments", json={"body": "Deployed.", "author": "Ana"})
    with transaction() as session:
        [item] = reverse_comments.plan_comments(session, 1)
    posted = h.client.create_comment(item.repo, item.issue_id, item.body)
    h.process_webhooks()  # the echo first: it links the comment by its marker
    with transaction() as session:
        reverse_comments.finish_comment(session, item, posted)
        assert session.scalar(select(func.count()).select_from(CommentLink)) == 1
        assert session.scalar(select(func.count()).select_from(TicketComment)) == 1


def _escalated_issue_linked_by_its_webhook(h) -> tuple[dict, dict]:
    """A ticket, and an issue carrying its escalation marker whose issue:created webhook a
    worker has processed: the worker linked the two (forward._adopt_escalation)."""
    ticket = h.web.post("/api/tickets", json={"title": "Checkout 500s", "reporter": "jane@customer.example"}).json
    issue = h.api("POST", "/issues", json={"title": "Checkout 500s", "content": {
        "raw": "Escalated.\n\n" + ticket_marker("acme", ticket["id"])}})
    h.process_webhooks()
    return ticket, issue


def test_escalation_meeting_the_link_its_webhook_made_after_its_look_takes_that_link(harness):
    # On PostgreSQL, a worker can commit the issue's link between the escalation's look for a
    # link and its insert of one: the insert then clashes with the worker's row.
    h = harness
    ticket, issue = _escalated_issue_linked_by_its_webhook(h)
    with transaction() as session:
        made = session.scalar(select(Link).where(Link.target_id == str(ticket["id"])))
        shadows = session.scalar(select(func.count()).select_from(Shadow).where(Shadow.link_id == made.id))
        conn = session.get(Connection, made.connection_id)
        linked = select(Link).where(Link.connection_id == conn.id, Link.target_id == str(ticket["id"]))
        found = escalate._insert_link(session, linked, conn, session.get(Ticket, ticket["id"]),
                                      REPO, issue, None)
        assert found.id == made.id
        ledger.record(session, connection_id=conn.id, direction="reverse", outcome="applied",
                      link_id=found.id, detail="the transaction goes on after the clash")
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Link)) == 1
        assert session.scalar(select(func.count()).select_from(Shadow)) == shadows  # none added


def test_an_escalation_link_clashing_with_another_tickets_link_is_an_error(harness):
    h = harness
    ticket, issue = _escalated_issue_linked_by_its_webhook(h)
    other = h.web.post("/api/tickets", json={"title": "Another", "reporter": "joe@customer.example"}).json
    with transaction() as session:
        conn = session.scalar(select(Connection))
        linked = select(Link).where(Link.connection_id == conn.id, Link.target_id == str(other["id"]))
        with pytest.raises(IntegrityError):  # the issue is already linked to the first ticket
            escalate._insert_link(session, linked, conn, session.get(Ticket, other["id"]),
                                  REPO, issue, None)


class HeldWrite(httpx2.BaseTransport):
    """The simulator behind a gate: the first POST whose path ends with `suffix` waits inside
    the call (not yet applied) until the test opens the gate."""

    def __init__(self, inner: httpx2.BaseTransport, suffix: str):
        self.inner, self.suffix = inner, suffix
        self.inside, self.gate = threading.Event(), threading.Event()

    def handle_request(self, request):
        if request.method == "POST" and request.url.path.endswith(self.suffix) and not self.inside.is_set():
            self.inside.set()
            assert self.gate.wait(10), "the test never opened the gate"
        return self.inner.handle_request(request)


def _held_client(h, suffix: str) -> tuple[BitbucketClient, HeldWrite]:
    held = HeldWrite(httpx2.WSGITransport(app=create_simulator(h.state)), suffix)
    return BitbucketClient(f"{SIM}/2.0", ApiTokenAuth(parse_api_token(TOKEN)), transport=held,
                           sleep=lambda s: None), held


def test_a_push_overlapping_another_of_the_same_link_never_posts_its_reply_again(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    comments_url = f"/api/tickets/{ticket['id']}/comments"
    assert h.web.post(comments_url, json={"body": "We are on it.", "author": "Ana"}).status_code == 201
    client, held = _held_client(h, "/comments")
    first, first_result = in_thread(lambda: push.push_link(1, client_factory=lambda _c: client))
    assert held.inside.wait(10)

    # While the first push is inside its POST, the agent replies again and that reply's push
    # runs on another worker: it must neither resume the first reply nor post ahead of it.
    assert h.web.post(comments_url, json={"body": "Fix deployed.", "author": "Ana"}).status_code == 201
    assert push.push_link(1, client_factory=h.client_factory) == "nothing to push"
    with transaction() as session:
        states = dict(session.execute(select(OutboxEntry.note_id, OutboxEntry.state)).all())
    assert sorted(states.values()) == ["pending", "sending"]

    held.gate.set()
    first.join(10)
    assert first_result and first_result[0].count("posted") == 2  # the holder posted both, in order
    h.process_webhooks()
    bodies = [c["content"]["raw"] for c in h.api("GET", f"/issues/{issue['id']}/comments")["values"]
              if c["content"]["raw"]]
    assert [b.split("\n")[0] for b in bodies] == ["We are on it.", "Fix deployed."]
    with transaction() as session:
        rows = list(session.scalars(select(OutboxEntry).where(OutboxEntry.kind == "comment")))
        assert [(r.state, r.claimed_until, r.attempts) for r in rows] == [("sent", None, 1)] * 2
        assert session.scalar(select(func.count()).select_from(CommentLink)) == 2
    client.close()


def test_a_push_overlapping_another_leaves_the_fields_to_it_and_the_holder_writes_them_after(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    assert h.web.patch(f"/api/tickets/{ticket['id']}", json={"status": "open"}).status_code == 200
    client, held = _held_client(h, "/changes")
    first, first_result = in_thread(lambda: push.push_link(1, client_factory=lambda _c: client))
    assert held.inside.wait(10)

    assert h.web.patch(f"/api/tickets/{ticket['id']}", json={"priority": "urgent"}).status_code == 200
    # Two writes of one issue in flight at once could land in either order; the second push
    # leaves the issue's fields to the push that holds them.
    assert push.push_link(1, client_factory=h.client_factory) == "nothing to push"
    held.gate.set()
    first.join(10)
    assert first_result == ["pushed status; pushed priority"]
    remote = h.api("GET", f"/issues/{issue['id']}")
    assert (remote["state"], remote["priority"]) == ("open", "blocker")
    writes = [r for r in h.state.request_log if r.method == "POST" and r.path.endswith("/changes")]
    assert len(writes) == 2
    client.close()


def test_a_failed_comment_gives_its_claims_back_so_the_retry_resumes_at_once(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    for body in ("First.", "Second."):
        h.web.post(f"/api/tickets/{ticket['id']}/comments", json={"body": body, "author": "Ana"})
    h.state.faults.add(status=503, times=1, method="POST", path=r"/comments$")
    with pytest.raises(BitbucketError):
        push.push_link(1, client_factory=h.client_factory)  # the task would retry
    with transaction() as session:
        rows = list(session.scalars(select(OutboxEntry).order_by(OutboxEntry.id)))
    # The first may have reached Bitbucket (a 503 can follow a write): it is resumed with a
    # look for its marker; the second was never tried: it waits as it did. No claim is left.
    assert [(r.state, r.claimed_until) for r in rows] == [("sending", None), ("pending", None)]
    assert push.push_link(1, client_factory=h.client_factory).count("posted") == 2
    bodies = [c["content"]["raw"] for c in h.api("GET", f"/issues/{issue['id']}/comments")["values"]]
    assert [b.split("\n")[0] for b in bodies if b] == ["First.", "Second."]


def test_a_crashed_pushs_claim_keeps_others_off_until_it_lapses_then_the_sweeper_resumes_it(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    h.web.post(f"/api/tickets/{ticket['id']}/comments", json={"body": "Looking.", "author": "Ana"})
    with transaction() as session:
        [item] = reverse_comments.plan_comments(session, 1)  # ... and the worker is killed in its POST
        assert outbox.waiting_links(session, utcnow()) == []  # held: the sweeper leaves it
    let_claims_lapse()
    with transaction() as session:
        assert outbox.waiting_links(session, utcnow()) == [1]
    assert "posted" in push.push_link(1, client_factory=h.client_factory)
    assert len([c for c in h.api("GET", f"/issues/{issue['id']}/comments")["values"]
                if c["content"]["raw"]]) == 1


def test_the_claim_outlasts_the_slowest_call_the_client_can_make():
    from worker.bitbucket.budget import BudgetMeter
    # Built as worker.sync.clients builds it for a connection: default timeouts, retries, budget.
    client = BitbucketClient("https://api.bitbucket.org/2.0", None, budget=BudgetMeter(None), credential_key="k")
    assert 300 < client.longest_call_seconds() < claims.CLAIM.total_seconds()


def _plan_in_a_process_that_dies(link_id: int) -> None:
    """Another worker process plans (claims) the link's comments and is killed in its POST."""
    import multiprocessing

    def plan_and_die():
        from worker.db.session import get_engine
        get_engine().dispose(close=False)  # the parent's pooled connections stay the parent's
        with transaction() as session:
            reverse_comments.plan_comments(session, link_id)
        os._exit(0)
    child = multiprocessing.get_context("fork").Process(target=plan_and_die)
    child.start()
    child.join(10)
    assert child.exitcode == 0


def test_a_claim_whose_process_died_is_taken_over_at_once_on_the_same_host(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    h.web.post(f"/api/tickets/{ticket['id']}/comments", json={"body": "Looking.", "author": "Ana"})
    _plan_in_a_process_that_dies(1)
    with transaction() as session:
        row = session.scalar(select(OutboxEntry))
        assert row.state == "sending" and claims.is_live(row.claimed_until) and claims.holder_gone(row.claimed_by)
    # No waiting for the claim to lapse: the next attempt resumes it (marker first) ...
    assert "posted" in push.push_link(1, client_factory=h.client_factory)
    assert len([c for c in h.api("GET", f"/issues/{issue['id']}/comments")["values"] if c["content"]["raw"]]) == 1


def test_the_sweeper_gives_back_a_dead_processs_claims_and_queues_their_links(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    h.web.post(f"/api/tickets/{ticket['id']}/comments", json={"body": "Looking.", "author": "Ana"})
    _plan_in_a_process_that_dies(1)
    with transaction() as session:
        assert outbox.waiting_links(session, utcnow()) == []  # a live claim, as far as SQL can tell
        assert outbox.release_dead_claims(session) == [1]
    with transaction() as session:
        row = session.scalar(select(OutboxEntry))
        assert (row.state, row.claimed_until, row.claimed_by) == ("sending", None, None)  # resumed, marker first
        assert outbox.waiting_links(session, utcnow()) == [1]
        assert outbox.release_dead_claims(session) == []


def test_a_live_processs_claim_is_never_taken_over_before_it_lapses(harness):
    h = harness
    issue, ticket = _new_linked_ticket(h)
    h.web.post(f"/api/tickets/{ticket['id']}/comments", json={"body": "Looking.", "author": "Ana"})
    with transaction() as session:
        reverse_comments.plan_comments(session, 1)  # this process: alive, still "posting"
        assert outbox.release_dead_claims(session) == []
    with transaction() as session:
        row = session.scalar(select(OutboxEntry))
        assert row.claimed_by == claims.holder()
        # Another host's claim, or one from before holders were named, cannot be judged: alive.
        for other in ("elsewhere:1:1", None):
            assert not claims.holder_gone(other)
