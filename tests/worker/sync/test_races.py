"""Races pinned down step by step: our write's webhook arriving before our own commit, a crash
between a remote write and the local commit, and an escalation's link made by its webhook."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from tests.worker.sync.conftest import REPO
from worker import ledger
from worker.db.models import (CommentLink, Connection, LedgerEntry, Link, OutgoingChange, Shadow, Ticket,
                              TicketComment)
from worker.db.session import transaction
from worker.sync import escalate, push, reverse
from worker.sync.markers import ticket_marker


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
        pending = session.scalar(select(func.count()).select_from(OutgoingChange).where(
            OutgoingChange.state.in_(("pending", "sending"))))
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
        [item] = reverse.plan_comments(session, 1)
    h.client.create_comment(item.repo, item.issue_id, item.body)
    # ... and the worker dies here, before finish_comment. The task runs again:
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
        [item] = reverse.plan_comments(session, 1)
    posted = h.client.create_comment(item.repo, item.issue_id, item.body)
    h.process_webhooks()  # the echo first: it links the comment by its marker
    with transaction() as session:
        reverse.finish_comment(session, item, posted)
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
                                      escalate.Request(ticket_id=ticket["id"], repo=REPO), issue, None)
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
                                  escalate.Request(ticket_id=other["id"], repo=REPO), issue, None)
