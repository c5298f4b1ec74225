"""Escalation's claim, in-process (the end-to-end cases are in tests/integration)."""
from __future__ import annotations

import pytest
from datetime import timedelta

from sqlalchemy import select, update

from tests.worker.sync.conftest import REPO
from worker.db.models import Escalation, utcnow
from worker.db.session import transaction
from worker.sync import claims, escalate


class _BrokenClient:
    """A client that fails the way a bug of ours would, not the way Bitbucket does."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    def create_issue(self, repo, body):
        raise RuntimeError("a bug between the search and the create")


def test_a_failed_escalation_gives_its_claim_back_so_a_retry_resumes_at_once(harness):
    h = harness
    ticket = h.web.post("/api/tickets", json={"title": "Checkout 500s", "reporter": "jane@customer.example"}).json
    req = escalate.Request(ticket_id=ticket["id"], repo=REPO)
    with pytest.raises(RuntimeError):
        escalate.escalate(req, client_factory=lambda _conn_id: _BrokenClient(h.client))
    with transaction() as session:
        esc = session.scalar(select(Escalation))
        assert esc.claimed_until is None and esc.state != "done"
        assert esc.error == "RuntimeError"  # the type only: other errors' text may carry data

    # Without the claim given back, this would wait out the claim (ten minutes) and time out.
    result = escalate.escalate(req, client_factory=h.client_factory, wait_seconds=1.0)
    assert result.created and result.repo == REPO
    assert len(h.api("GET", "/issues")["values"]) == 1


class _SlowSearch:
    """A client whose search outlives the claim: while it runs, the claim lapses and another
    request takes the escalation over and finishes it."""

    def __init__(self, real, meanwhile):
        self._real, self._meanwhile = real, meanwhile

    def __getattr__(self, name):
        return getattr(self._real, name)

    def iter_issues(self, *args, **kwargs):
        found = list(self._real.iter_issues(*args, **kwargs))  # nothing yet
        self._meanwhile()
        return iter(found)


def test_an_escalation_whose_claim_lapsed_and_was_taken_over_never_creates_a_second_issue(harness):
    h = harness
    ticket = h.web.post("/api/tickets", json={"title": "Checkout 500s", "reporter": "jane@customer.example"}).json
    req = escalate.Request(ticket_id=ticket["id"], repo=REPO)
    taken_over = []

    def lapse_and_take_over():
        with transaction() as session:
            session.execute(update(Escalation).values(claimed_until=utcnow() - timedelta(seconds=1)))
        taken_over.append(escalate.escalate(req, client_factory=h.client_factory))

    with pytest.raises(claims.Lost):
        escalate.escalate(req, client_factory=lambda _c: _SlowSearch(h.client, lapse_and_take_over))
    assert taken_over[0].created
    assert len(h.api("GET", "/issues")["values"]) == 1
    with transaction() as session:
        esc = session.scalar(select(Escalation))
        assert esc.state == "done" and esc.claimed_until is None


def test_an_escalation_renews_its_claim_before_each_remote_write(harness):
    h = harness
    ticket = h.web.post("/api/tickets", json={"title": "Checkout 500s", "reporter": "jane@customer.example"}).json
    seen = []

    class Watching:
        def __init__(self, real):
            self._real = real

        def __getattr__(self, name):
            return getattr(self._real, name)

        def iter_issues(self, *args, **kwargs):
            with transaction() as session:
                seen.append(session.scalar(select(Escalation.claimed_until)))
            return self._real.iter_issues(*args, **kwargs)

        def create_issue(self, *args, **kwargs):
            with transaction() as session:
                seen.append(session.scalar(select(Escalation.claimed_until)))
            return self._real.create_issue(*args, **kwargs)

    escalate.escalate(escalate.Request(ticket_id=ticket["id"], repo=REPO), client_factory=lambda _c: Watching(h.client))
    at_search, at_create = seen
    # The create went out under a fresh claim, not what the search left of the first one.
    assert at_create > at_search
