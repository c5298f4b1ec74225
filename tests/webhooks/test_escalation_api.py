"""`POST /api/tickets/ID/escalate`: the request records the escalation and queues it, and never
calls Bitbucket; the `bbsync.escalate` task creates the issue (run here in-process, retries
included); `GET /api/tickets/ID` shows where it stands."""
from __future__ import annotations

import functools
import io
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from tests.worker.sync.conftest import REPO, harness  # noqa: F401 - the harness fixture
from webhooks import tickets
from worker.bitbucket.client import BitbucketClient
from worker.db.models import Escalation, utcnow
from worker.db.session import transaction
from worker.engine.states import EscalationState
from worker.queue import tasks
from worker.sync import claims, escalate


@pytest.fixture
def queued(harness, monkeypatch):  # noqa: F811 - the fixture imported above
    """The jobs the web app queues, recorded instead of published."""
    jobs: list[tuple[str, int]] = []
    monkeypatch.setattr(tickets, "enqueue", lambda task, arg: jobs.append((task, arg)))
    return jobs


def _refuse_bitbucket(m: pytest.MonkeyPatch) -> None:
    """From here on, any Bitbucket call fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a Bitbucket call inside a web request")
    m.setattr(BitbucketClient, "_request", refuse)


@pytest.fixture
def no_bitbucket(monkeypatch):
    with monkeypatch.context() as m:
        _refuse_bitbucket(m)
        yield


def _ticket(h, **extra) -> dict:
    return h.web.post("/api/tickets", json={"title": "Checkout 500s", "reporter": "jane@customer.example",
                                            **extra}).json


def _escalate(h, ticket_id: int, **body):
    return h.web.post(f"/api/tickets/{ticket_id}/escalate", json={"repo": REPO, **body})


def _escalations() -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(Escalation))


def _worker(h, monkeypatch) -> None:
    """The task runs against the harness's simulator (a worker builds its client from the
    stored credential)."""
    monkeypatch.setattr(tasks.escalation, "run_escalation",
                        functools.partial(escalate.run_escalation, client_factory=h.client_factory))


def test_escalate_answers_202_at_once_and_the_worker_makes_the_issue(harness, queued, monkeypatch):
    h = harness
    ticket = _ticket(h)
    calls = len(h.state.request_log)
    with monkeypatch.context() as m:
        _refuse_bitbucket(m)
        r = _escalate(h, ticket["id"], kind="bug")
        assert r.status_code == 202, r.json
        esc = r.json["escalation"]
        assert r.json == {"escalation": {"id": esc["id"], "state": "creating", "connection": "acme", "repo": REPO},
                          "ticket": f"/api/tickets/{ticket['id']}"}
        assert r.headers["Location"] == f"/api/tickets/{ticket['id']}"
        assert queued == [("escalate", esc["id"])]
        shown = h.web.get(f"/api/tickets/{ticket['id']}").json
        assert shown["bitbucket"] is None
        assert shown["escalation"] == {"id": esc["id"], "state": "creating", "repo": REPO, "error": None}

        # Asked again while it waits: the same escalation, queued again (harmless: one claim).
        again = _escalate(h, ticket["id"])
        assert again.status_code == 202 and again.json["escalation"]["id"] == esc["id"]
        assert queued == [("escalate", esc["id"])] * 2 and _escalations() == 1
    assert len(h.state.request_log) == calls  # no Bitbucket call at all, before the worker's

    _worker(h, monkeypatch)
    assert tasks.escalate.apply(args=[esc["id"]]).get() == f"{REPO}#1"
    shown = h.web.get(f"/api/tickets/{ticket['id']}").json
    assert shown["escalation"] == {"id": esc["id"], "state": "done", "repo": REPO, "error": None}
    assert shown["bitbucket"]["repo"] == REPO and shown["bitbucket"]["issue_id"] == 1
    # The second message finds it done: nothing more on Bitbucket.
    calls = len(h.state.request_log)
    assert tasks.escalate.apply(args=[esc["id"]]).get() == f"{REPO}#1"
    assert len(h.state.request_log) == calls

    with monkeypatch.context() as m:
        _refuse_bitbucket(m)
        done = _escalate(h, ticket["id"])
    assert done.status_code == 200
    assert done.json == {"connection": "acme", "repo": REPO, "issue_id": 1, "url": shown["bitbucket"]["url"],
                         "created": False}
    assert len(queued) == 2 and len(h.api("GET", "/issues")["values"]) == 1


@pytest.mark.parametrize("body, status, message", [
    ({"kind": "epic"}, 400, "kind must be one of bug, enhancement, proposal, task"),
    ({"attachments": ["missing.txt"]}, 400, "has no attachment named 'missing.txt'"),
    ({"attachments": "har.txt"}, 400, "attachments must be a list of file names"),
    ({"include_comments": "yes"}, 400, "include_comments must be true or false"),
    ({"repo": "nobody/syncs-this"}, 400, "no connection syncs nobody/syncs-this"),
    ({"repo": REPO, "connection": "other"}, 400, "under the name 'other'"),
    ({"repo": "a/" + "b" * 200}, 400, "repo is longer than 201 characters"),
    ({"repo": "acme/\x00widgets"}, 400, "repo contains a NUL character"),
    ({"repo": "acme/\ud800"}, 400, "unpaired UTF-16 surrogate"),
    ({"repo": "' OR 1=1 --"}, 400, "no connection syncs"),
    ({"repo": ""}, 400, "repo must not be empty"),
    ({"repo": None}, 400, "repo must be a string"),
])
def test_a_refused_escalation_records_and_queues_nothing(harness, queued, no_bitbucket, body, status, message):
    h = harness
    ticket = _ticket(h)
    r = _escalate(h, ticket["id"], **body)
    assert r.status_code == status and message in r.json["error"], r.json
    assert _escalations() == 0 and queued == []
    assert h.web.get(f"/api/tickets/{ticket['id']}").json["escalation"] is None


def test_an_unknown_ticket_or_a_body_that_is_not_json_is_refused(harness, queued, no_bitbucket):
    h = harness
    ticket = _ticket(h)
    missing = _escalate(h, 99999999)
    assert missing.status_code == 404 and missing.json["error"] == "ticket 99999999 does not exist"
    not_json = h.web.post(f"/api/tickets/{ticket['id']}/escalate", data=b"nope", content_type="text/plain")
    assert not_json.status_code == 400
    assert h.web.post(f"/api/tickets/{ticket['id']}/escalate", json={}).status_code == 400
    assert _escalations() == 0 and queued == []


def test_the_task_retries_a_bitbucket_5xx_and_then_succeeds(harness, queued, monkeypatch):
    h = harness
    ticket = _ticket(h)
    assert h.web.post(f"/api/tickets/{ticket['id']}/attachments",
                      data={"files": (io.BytesIO(b"GET /checkout 500"), "har.txt")}).status_code == 201
    esc_id = _escalate(h, ticket["id"], attachments=["har.txt"]).json["escalation"]["id"]
    _worker(h, monkeypatch)
    attempts: list[str] = []
    real = tasks.escalation.run_escalation

    def watched(escalation_id):
        try:
            return real(escalation_id)
        except Exception as exc:
            attempts.append(exc.__class__.__name__)
            raise

    monkeypatch.setattr(tasks.escalation, "run_escalation", watched)
    # The create fails twice (a POST is not retried by the client), then an upload fails for
    # a whole attempt (the client's own retries included).
    h.state.faults.add(status=503, times=2, method="POST", path=r"/issues$")
    h.state.faults.add(status=500, times=5, method="POST", path=r"/attachments$")
    assert tasks.escalate.apply(args=[esc_id]).get() == f"{REPO}#1"
    assert attempts == ["ServerError"] * 3
    [issue] = h.api("GET", "/issues")["values"]
    assert [a["name"] for a in h.api("GET", f"/issues/{issue['id']}/attachments")["values"]] == ["har.txt"]
    shown = h.web.get(f"/api/tickets/{ticket['id']}").json
    assert shown["escalation"]["state"] == "done" and shown["bitbucket"]["issue_id"] == issue["id"]


def test_after_the_last_retry_the_escalation_fails_with_the_reason_and_can_be_asked_again(harness, queued,
                                                                                          monkeypatch):
    h = harness
    ticket = _ticket(h)
    esc_id = _escalate(h, ticket["id"]).json["escalation"]["id"]
    _worker(h, monkeypatch)
    monkeypatch.setattr(tasks, "MAX_RETRIES", 2)
    h.state.faults.add(status=503, times=100, method="POST", path=r"/issues$")
    outcome = tasks.escalate.apply(args=[esc_id])
    assert outcome.failed()
    escalation = h.web.get(f"/api/tickets/{ticket['id']}").json["escalation"]
    assert escalation["state"] == "failed"
    assert escalation["error"].startswith("gave up after 2 retries: ServerError: ")
    assert h.api("GET", "/issues")["values"] == []

    # Bitbucket is back; the agent escalates again: the same row, running again.
    h.state.faults.clear()
    again = _escalate(h, ticket["id"])
    assert again.status_code == 202 and again.json["escalation"] == {
        "id": esc_id, "state": "creating", "connection": "acme", "repo": REPO}
    assert tasks.escalate.apply(args=[esc_id]).get() == f"{REPO}#1"
    shown = h.web.get(f"/api/tickets/{ticket['id']}").json
    assert shown["escalation"] == {"id": esc_id, "state": "done", "repo": REPO, "error": None}


def test_an_error_no_retry_mends_fails_the_escalation_with_its_type_only(harness, queued, monkeypatch):
    h = harness
    ticket = _ticket(h)
    esc_id = _escalate(h, ticket["id"]).json["escalation"]["id"]

    def bug(_escalation_id):
        raise RuntimeError("SELECT secret FROM ...")

    monkeypatch.setattr(tasks.escalation, "run_escalation", bug)
    assert tasks.escalate.apply(args=[esc_id]).failed()
    escalation = h.web.get(f"/api/tickets/{ticket['id']}").json["escalation"]
    assert (escalation["state"], escalation["error"]) == ("failed", "RuntimeError")


def test_give_up_fails_only_an_escalation_nobody_holds_and_that_is_not_done(harness, queued):
    h = harness
    esc_id = _escalate(h, _ticket(h)["id"]).json["escalation"]["id"]
    with transaction() as session:
        session.execute(update(Escalation).values(claimed_until=claims.until()))
    assert not escalate.give_up(esc_id, "gave up")  # its holder goes on
    with transaction() as session:
        session.execute(update(Escalation).values(claimed_until=None))
    assert escalate.give_up(esc_id, "gave up after 8 retries: ServerError: 500")
    with transaction() as session:
        esc = session.get(Escalation, esc_id)
    assert (esc.state, esc.error) == ("failed", "gave up after 8 retries: ServerError: 500")
    assert escalate.run_escalation(esc_id, client_factory=h.client_factory) is None
    assert h.api("GET", "/issues")["values"] == []


def test_the_sweeper_queues_escalations_waiting_unheld(harness, queued, monkeypatch):
    h = harness
    ids = [_escalate(h, _ticket(h, title=f"T{i}")["id"]).json["escalation"]["id"] for i in range(5)]
    waiting, held, lapsed, done, failed = ids
    old = utcnow() - timedelta(minutes=5)
    with transaction() as session:
        for esc_id, values in ((held, {"claimed_until": claims.until()}), (lapsed, {"claimed_until": old}),
                               (done, {"state": EscalationState.DONE}), (failed, {"state": EscalationState.FAILED})):
            session.execute(update(Escalation).where(Escalation.id == esc_id).values(**values))
        session.execute(update(Escalation).values(updated_at=old))  # last: an UPDATE sets it to now
    enqueued: list[tuple[str, int]] = []
    monkeypatch.setattr(tasks, "enqueue", lambda task, arg: enqueued.append((task, arg)) or True)
    tasks.requeue_pending()
    assert [job for job in enqueued if job[0] == "escalate"] == [("escalate", waiting), ("escalate", lapsed)]
    fresh = _escalate(h, _ticket(h, title="Fresh")["id"]).json["escalation"]["id"]
    enqueued.clear()
    tasks.requeue_pending()  # a fresh one is left to its own message for REQUEUE_AFTER
    assert ("escalate", fresh) not in enqueued
