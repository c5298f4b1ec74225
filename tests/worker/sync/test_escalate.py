"""Escalation in-process: the request step (no Bitbucket), and the run's claim and resumption
(the API is in tests/webhooks/test_escalation_api.py, the end-to-end cases in
tests/integration)."""
from __future__ import annotations

import io
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from tests.worker.sync.conftest import REPO, in_thread
from worker.bitbucket.errors import ServerError
from worker.db.models import Escalation, Link, utcnow
from worker.db.session import transaction
from worker.engine.states import EscalationState
from worker.sync import claims, escalate, escalation_request, waiting


def _ticket(h, title: str = "Checkout 500s") -> dict:
    return h.web.post("/api/tickets", json={"title": title, "reporter": "jane@customer.example"}).json


def _ask(ticket: dict, **options) -> escalate.Queued:
    queued = escalation_request.request_escalation(None, escalate.Request(ticket_id=ticket["id"], repo=REPO,
                                                                          **options))
    assert isinstance(queued, escalate.Queued)
    return queued


def _row() -> Escalation:
    with transaction() as session:
        return session.scalar(select(Escalation))


def _issues(h) -> list[dict]:
    return h.api("GET", "/issues")["values"]


class _Wrapped:
    """The harness's client, with some calls replaced."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)


# --- the request: one row, no Bitbucket ------------------------------------------------------

def test_a_request_records_one_escalation_and_calls_bitbucket_not_at_all(harness):
    h = harness
    ticket = _ticket(h)
    calls = len(h.state.request_log)
    first = _ask(ticket, kind="task", attachments=())
    again = _ask(ticket, kind="bug")
    assert (again.escalation_id, again.state) == (first.escalation_id, EscalationState.CREATING)
    assert (first.connection, first.repo) == ("acme", REPO)
    assert len(h.state.request_log) == calls and _issues(h) == []
    esc = _row()
    assert (esc.state, esc.claimed_until, esc.options["kind"]) == ("creating", None, "task")  # the first's options


def test_a_request_that_loses_the_insert_race_answers_with_the_winners_row(harness, monkeypatch):
    # Two requests looked, saw no row, and both inserted: the unique constraint stops the
    # second, which then answers with the first's row.
    h = harness
    ticket = _ticket(h)
    first = _ask(ticket)
    real, looks = escalation_request._find, []

    def not_yet_committed(session, connection_id, ticket_id):
        looks.append(ticket_id)
        return None if len(looks) == 1 else real(session, connection_id, ticket_id)

    monkeypatch.setattr(escalation_request, "_find", not_yet_committed)
    assert _ask(ticket).escalation_id == first.escalation_id and len(looks) == 2
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Escalation)) == 1


def test_a_done_escalation_answers_with_its_link_and_a_failed_one_is_run_again(harness):
    h = harness
    ticket = _ticket(h)
    queued = _ask(ticket)
    with transaction() as session:
        session.execute(update(Escalation).values(state=EscalationState.FAILED, error="ServerError: 500"))
    again = _ask(ticket)
    assert again.escalation_id == queued.escalation_id and _row().state == "creating" and _row().error is None
    result = escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    answer = escalation_request.request_escalation(None, escalate.Request(ticket_id=ticket["id"], repo=REPO))
    assert answer == escalate.Result("acme", REPO, result.issue_id, result.url, False)
    # A duplicate task of a done escalation answers the same, with no remote write.
    calls = len(h.state.request_log)
    assert escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory) == answer
    assert len(h.state.request_log) == calls


# --- the run: its claim ----------------------------------------------------------------------

class _BrokenClient(_Wrapped):
    """A client that fails the way a bug of ours would, not the way Bitbucket does."""

    def create_issue(self, repo, body):
        raise RuntimeError("a bug between the search and the create")


def test_a_failed_escalation_gives_its_claim_back_so_a_retry_resumes_at_once(harness):
    h = harness
    queued = _ask(_ticket(h))
    with pytest.raises(RuntimeError):
        escalate.run_escalation(queued.escalation_id, client_factory=lambda _conn_id: _BrokenClient(h.client))
    esc = _row()
    assert esc.claimed_until is None and esc.state == "creating"
    assert esc.error == "RuntimeError"  # the type only: other errors' text may carry data

    # Without the claim given back, this would find it held (for ten minutes).
    result = escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    assert result.created and result.repo == REPO
    assert len(_issues(h)) == 1


class _SlowSearch(_Wrapped):
    """A client whose search outlives the claim: while it runs, the claim lapses and another
    attempt takes the escalation over and finishes it."""

    def __init__(self, real, meanwhile):
        super().__init__(real)
        self._meanwhile = meanwhile

    def iter_issues(self, *args, **kwargs):
        found = list(self._real.iter_issues(*args, **kwargs))  # nothing yet
        self._meanwhile()
        return iter(found)


def test_an_escalation_whose_claim_lapsed_and_was_taken_over_never_creates_a_second_issue(harness):
    h = harness
    queued = _ask(_ticket(h))
    taken_over = []

    def lapse_and_take_over():
        with transaction() as session:
            session.execute(update(Escalation).values(claimed_until=utcnow() - timedelta(seconds=1)))
        taken_over.append(escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory))

    with pytest.raises(claims.Lost):
        escalate.run_escalation(queued.escalation_id,
                                client_factory=lambda _c: _SlowSearch(h.client, lapse_and_take_over))
    assert taken_over[0].created
    assert len(_issues(h)) == 1
    esc = _row()
    assert esc.state == "done" and esc.claimed_until is None


def test_an_escalation_renews_its_claim_before_each_remote_write(harness):
    h = harness
    queued = _ask(_ticket(h))
    seen = []

    class Watching(_Wrapped):
        def iter_issues(self, *args, **kwargs):
            seen.append(_row().claimed_until)
            return self._real.iter_issues(*args, **kwargs)

        def create_issue(self, *args, **kwargs):
            seen.append(_row().claimed_until)
            return self._real.create_issue(*args, **kwargs)

    escalate.run_escalation(queued.escalation_id, client_factory=lambda _c: Watching(h.client))
    at_search, at_create = seen
    # The create went out under a fresh claim, not what the search left of the first one.
    assert at_create > at_search


class _GatedCreate(_Wrapped):
    """A client whose create waits inside the call until the test opens the gate."""

    def __init__(self, real):
        super().__init__(real)
        self.inside, self.gate = threading.Event(), threading.Event()

    def create_issue(self, *args, **kwargs):
        self.inside.set()
        assert self.gate.wait(10), "the test never opened the gate"
        return self._real.create_issue(*args, **kwargs)


def test_two_concurrent_runs_of_one_escalation_yield_one_issue_and_the_second_does_not_wait(harness):
    h = harness
    queued = _ask(_ticket(h))
    gated = _GatedCreate(h.client)
    first, first_result = in_thread(lambda: escalate.run_escalation(queued.escalation_id,
                                                                     client_factory=lambda _c: gated))
    assert gated.inside.wait(10)
    calls = len(h.state.request_log)
    # A second task (a redelivery, the sweeper's) finds the claim live: it raises at once, so
    # that its task retries later instead of holding a worker; it made no call.
    with pytest.raises(claims.Held):
        escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    assert len(h.state.request_log) == calls
    gated.gate.set()
    first.join(10)
    assert first_result and first_result[0].created
    retried = escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    assert (retried.issue_id, retried.created) == (first_result[0].issue_id, False)
    assert len(_issues(h)) == 1


def test_the_command_line_waits_for_the_attempt_holding_the_escalation(harness):
    h = harness
    ticket = _ticket(h)
    queued = _ask(ticket)
    gated = _GatedCreate(h.client)
    first, first_result = in_thread(lambda: escalate.run_escalation(queued.escalation_id,
                                                                     client_factory=lambda _c: gated))
    assert gated.inside.wait(10)
    threading.Timer(0.5, gated.gate.set).start()
    waited = escalate.escalate_in_process(escalate.Request(ticket_id=ticket["id"], repo=REPO),
                                          client_factory=h.client_factory, wait_seconds=10)
    first.join(10)
    assert (waited.issue_id, waited.created) == (first_result[0].issue_id, False)
    assert len(_issues(h)) == 1


class _Crash(BaseException):
    """The worker process dying: nothing after it runs, not even the error handling."""


def test_an_issue_created_by_an_attempt_that_died_before_recording_it_is_found_by_its_marker(harness):
    h = harness
    queued = _ask(_ticket(h))

    class CreateThenDie(_Wrapped):
        def create_issue(self, *args, **kwargs):
            self._real.create_issue(*args, **kwargs)
            raise _Crash()

    with pytest.raises(_Crash):
        escalate.run_escalation(queued.escalation_id, client_factory=lambda _c: CreateThenDie(h.client))
    assert _row().bitbucket_issue_id is None and claims.is_live(_row().claimed_until)
    with pytest.raises(claims.Held):  # the dead attempt's claim, until it lapses
        escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    with transaction() as session:
        session.execute(update(Escalation).values(claimed_until=utcnow() - timedelta(seconds=1)))
    result = escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    [issue] = _issues(h)
    assert (result.issue_id, result.created) == (issue["id"], True)
    with transaction() as session:
        assert session.scalar(select(Link.bitbucket_issue_id)) == issue["id"]


def test_an_upload_that_failed_is_resumed_without_a_second_issue(harness):
    h = harness
    ticket = _ticket(h)
    for name, data in (("a.log", b"first"), ("b.log", b"second")):
        assert h.web.post(f"/api/tickets/{ticket['id']}/attachments",
                          data={"files": (io.BytesIO(data), name)}).status_code == 201
    queued = _ask(ticket, attachments=("a.log", "b.log"))
    h.state.faults.add(status=500, times=10, method="POST", path=r"/attachments$")
    with pytest.raises(ServerError):
        escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    esc = _row()
    [issue] = _issues(h)
    assert (esc.bitbucket_issue_id, esc.uploaded, esc.state) == (issue["id"], [], "creating")
    assert esc.error.startswith("ServerError: ") and esc.claimed_until is None
    h.state.faults.clear()
    result = escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    assert result.issue_id == issue["id"] and len(_issues(h)) == 1
    names = sorted(a["name"] for a in h.api("GET", f"/issues/{issue['id']}/attachments")["values"])
    assert names == ["a.log", "b.log"] and sorted(_row().uploaded) == ["a.log", "b.log"]


def test_a_ticket_its_issues_webhook_linked_is_resumed_until_its_escalation_is_done(harness):
    # The issue is created, its webhook links the ticket (by the marker), and the upload
    # fails: asking again resumes the escalation (its attachment still goes up) instead of
    # answering with the link.
    h = harness
    ticket = _ticket(h)
    assert h.web.post(f"/api/tickets/{ticket['id']}/attachments",
                      data={"files": (io.BytesIO(b"GET /checkout 500"), "har.txt")}).status_code == 201
    queued = _ask(ticket, attachments=("har.txt",))
    h.state.faults.add(status=500, times=10, method="POST", path=r"/attachments$")
    with pytest.raises(ServerError):
        escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    h.state.faults.clear()
    h.process_webhooks()
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Link)) == 1
    assert _ask(ticket, attachments=("har.txt",)).escalation_id == queued.escalation_id
    result = escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    [issue] = _issues(h)
    assert result.issue_id == issue["id"]
    assert [a["name"] for a in h.api("GET", f"/issues/{issue['id']}/attachments")["values"]] == ["har.txt"]
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Link)) == 1
    done = escalation_request.request_escalation(None, escalate.Request(ticket_id=ticket["id"], repo=REPO))
    assert isinstance(done, escalate.Result) and (done.issue_id, done.created) == (issue["id"], False)


def test_an_escalation_held_by_a_process_that_died_is_taken_over_at_once_and_a_live_one_is_not(harness):
    import socket
    h = harness
    queued = _ask(_ticket(h))
    live_until = utcnow() + timedelta(minutes=5)
    with transaction() as session:  # a worker of this host holds it ...
        session.execute(update(Escalation).values(claimed_until=live_until, claimed_by=claims.holder()))
        assert waiting.escalations(session, utcnow()) == []
    with pytest.raises(claims.Held):
        escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    assert _issues(h) == []
    dead = f"{socket.gethostname()}:{2 ** 30}:4242"  # no such process: killed mid-run
    with transaction() as session:  # ... and is killed: no 10-minute wait for its claim to lapse
        session.execute(update(Escalation).values(claimed_until=live_until, claimed_by=dead))
        assert waiting.escalations(session, utcnow()) == [queued.escalation_id]
    result = escalate.run_escalation(queued.escalation_id, client_factory=h.client_factory)
    assert result.created and len(_issues(h)) == 1
    esc = _row()
    assert (esc.state, esc.claimed_until, esc.claimed_by) == ("done", None, None)
