"""Escalation's claim, in-process (the end-to-end cases are in tests/integration)."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from tests.worker.sync.conftest import REPO
from worker.db.models import Escalation
from worker.db.session import transaction
from worker.sync import escalate


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

    # Without the claim given back, this would wait out the claim (two minutes) and time out.
    result = escalate.escalate(req, client_factory=h.client_factory, wait_seconds=1.0)
    assert result.created and result.repo == REPO
    assert len(h.api("GET", "/issues")["values"]) == 1
