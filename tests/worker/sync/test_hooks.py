"""bbsync makes its own webhooks (issue 15): register, list, repair, remove, rotate, against the
simulator, with the simulator's hooks delivering into our real receiver."""
from __future__ import annotations

import json
import time
from datetime import timedelta

import httpx2
import pytest
from sqlalchemy import select

from simulator.app import create_app as create_simulator
from webhooks.directory import MIN_RELOAD_SECONDS
from webhooks.signatures import sign
from worker import connections
from worker.bitbucket.auth import ApiTokenAuth
from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.credentials import parse_api_token
from worker.db.helpdesk import Ticket
from worker.db.hooks import ConnectionHook
from worker.db.models import Delivery, LedgerEntry, WebhookSecret, utcnow
from worker.db.session import transaction
from worker.sync import hooks
from worker.sync.hooks import HooksError

from .conftest import REPO, SIM, TOKEN

PUBLIC = "https://bbsync.example"
OUR_URL = f"{PUBLIC}/webhooks/bitbucket/acme"


class Counting(httpx2.BaseTransport):
    def __init__(self, inner: httpx2.BaseTransport) -> None:
        self.inner, self.calls = inner, []

    def handle_request(self, request):
        self.calls.append((request.method, request.url.path))
        return self.inner.handle_request(request)

    def writes(self) -> list:
        return [c for c in self.calls if c[0] != "GET"]


@pytest.fixture
def bb(harness):
    transport = Counting(httpx2.WSGITransport(app=create_simulator(harness.state)))
    client = BitbucketClient(f"{SIM}/2.0", ApiTokenAuth(parse_api_token(TOKEN)), transport=transport,
                             sleep=lambda s: None)
    harness.counting, harness.factory = transport, (lambda _id: client)
    yield harness
    client.close()


def listed(h) -> list[dict]:
    return h.api("GET", "/hooks")["values"]


def ours(h) -> list[dict]:
    return [x for x in listed(h) if x["description"] == "bbsync acme"]


def setup_ledger() -> list[str]:
    with transaction() as session:
        return list(session.scalars(select(LedgerEntry.detail).where(LedgerEntry.direction == "setup")
                                    .order_by(LedgerEntry.id)))


def test_register_makes_one_hook_with_a_generated_secret_and_leaves_others_alone(bb):
    [result] = hooks.register("acme", PUBLIC, client_factory=bb.factory)
    assert (result.actions, result.state.state) == (["created"], "ok")
    [hook] = ours(bb)
    assert (hook["url"], hook["active"], hook["secret_set"]) == (OUR_URL, True, True)
    assert sorted(hook["events"]) == ["issue:comment_created", "issue:created", "issue:updated"]
    hand_made = [x for x in listed(bb) if x["description"] != "bbsync acme"]
    assert len(hand_made) == 1 and hand_made[0]["url"] == "http://bbsync.test/webhooks/bitbucket/acme"
    with transaction() as session:
        generated = session.scalars(select(WebhookSecret).where(WebhookSecret.origin == "hooks")).one()
        assert len(connections.active_secrets(generated.connection)) == 2   # s3cret and ours
        assert b"s3cret" not in generated.ciphertext
        row = session.scalars(select(ConnectionHook)).one()
        assert (row.repo, row.hook_uuid, row.secret_id) == (REPO, hook["uuid"].strip("{}"), generated.id)
    assert setup_ledger() == [f"{REPO}: created hook {hook['uuid'].strip('{}')}"]


def test_a_second_register_writes_nothing(bb):
    hooks.register("acme", PUBLIC, client_factory=bb.factory)
    before = len(bb.counting.writes())
    [again] = hooks.register("acme", PUBLIC, client_factory=bb.factory)
    assert (again.actions, again.state.state) == ([], "ok")
    assert len(bb.counting.writes()) == before
    assert len(ours(bb)) == 1 and len(setup_ledger()) == 1


def test_an_issue_reaches_a_ticket_through_the_hook_bbsync_made(bb):
    hooks.register("acme", PUBLIC, client_factory=bb.factory)
    for x in listed(bb):
        if x["description"] != "bbsync acme":
            bb.api("DELETE", f"/hooks/{x['uuid']}")
    bb.api("POST", "/issues", json={"title": "Checkout broken", "kind": "bug", "priority": "major"})
    [delivery_id] = bb.process_webhooks()
    with transaction() as session:
        delivery = session.get(Delivery, delivery_id)
        assert delivery.hook_uuid == ours(bb)[0]["uuid"].strip("{}")
        assert delivery.status == "processed"
        assert session.scalars(select(Ticket.title)).all() == ["Checkout broken"]


def test_drift_is_named_and_repaired(bb):
    hooks.register("acme", PUBLIC, client_factory=bb.factory)
    [hook] = ours(bb)
    bb.api("PUT", f"/hooks/{hook['uuid']}", json={"active": False, "events": ["issue:created"],
                                                   "secret": None})
    [state] = hooks.inspect("acme", client_factory=bb.factory)
    assert state.state.state == ("drifted: events missing issue:updated, issue:comment_created; "
                                 "inactive; no secret")
    assert not state.ok
    [repaired] = hooks.register("acme", client_factory=bb.factory)
    assert (repaired.actions, repaired.state.state) == (["repaired"], "ok")
    assert ours(bb)[0]["uuid"] == hook["uuid"]

    bb.api("DELETE", f"/hooks/{hook['uuid']}")
    assert hooks.inspect("acme", client_factory=bb.factory)[0].state.state == "missing"
    [again] = hooks.register("acme", client_factory=bb.factory)
    assert (again.actions, again.state.state) == (["created"], "ok")


def test_a_duplicate_of_ours_is_removed_and_the_recorded_one_kept(bb):
    hooks.register("acme", PUBLIC, client_factory=bb.factory)
    [kept] = ours(bb)
    bb.api("POST", "/hooks", json={"url": OUR_URL, "description": "bbsync acme", "active": True,
                                   "events": ["issue:created"]})
    assert hooks.inspect("acme", client_factory=bb.factory)[0].state.state == "drifted: 1 duplicate(s)"
    [result] = hooks.register("acme", client_factory=bb.factory)
    assert result.actions == ["removed duplicate"] and result.state.ok
    assert [x["uuid"] for x in ours(bb)] == [kept["uuid"]]


def test_repair_without_a_registration_says_how(bb):
    with pytest.raises(HooksError, match="bbsync hooks register acme --public-url"):
        hooks.register("acme", client_factory=bb.factory)
    with pytest.raises(HooksError, match="no connection named 'nobody'"):
        hooks.register("nobody", PUBLIC, client_factory=bb.factory)


@pytest.mark.parametrize("url", ["http://bbsync.example", "https://10.0.0.1", "https://u:p@x.example",
                                 "https://x.example/?a=1", "javascript:alert(1)"])
def test_an_unsafe_public_url_is_refused_and_nothing_changes(bb, url):
    from config.outbound import UnsafeUrl
    with pytest.raises(UnsafeUrl, match="--public-url"):
        hooks.register("acme", url, client_factory=bb.factory)
    assert bb.counting.calls == [] and ours(bb) == []
    with transaction() as session:
        assert session.scalars(select(WebhookSecret).where(WebhookSecret.origin == "hooks")).all() == []


@pytest.mark.parametrize("status", [401, 403, 404, 410])
def test_bitbucket_refusing_names_the_repository_and_is_recorded(bb, status):
    bb.state.faults.add(status=status, times=1, path=r"/hooks")
    [result] = hooks.register("acme", PUBLIC, client_factory=bb.factory)
    assert result.error.startswith(f"{REPO}: ") and str(status) in result.error
    assert ours(bb) == []
    [entry] = setup_ledger()
    assert entry.startswith(f"{REPO}: failed: ")
    [retry] = hooks.register("acme", client_factory=bb.factory)
    assert retry.state.ok


def _deliver(h, secret: str) -> int:
    body = json.dumps({"x": 1}).encode()
    return h.web.post("/webhooks/bitbucket/acme", data=body, headers={
        "X-Event-Key": "repo:push", "X-Hub-Signature": sign(secret, body),
        "Content-Type": "application/json"}).status_code


def _secret(h, which: int) -> str:
    from worker import crypto
    with transaction() as session:
        rows = session.scalars(select(WebhookSecret).where(WebhookSecret.origin == "hooks")
                               .order_by(WebhookSecret.id)).all()
        return crypto.decrypt(rows[which].ciphertext)


def test_rotation_keeps_the_old_secret_for_the_overlap_then_never(bb):
    hooks.register("acme", PUBLIC, client_factory=bb.factory)
    old = _secret(bb, 0)
    assert _deliver(bb, old) == 202                                  # the receiver caches it
    [result] = hooks.rotate("acme", timedelta(seconds=3), client_factory=bb.factory)
    time.sleep(MIN_RELOAD_SECONDS)   # a failed signature reloads the connection at most this often
    assert result.actions == ["new secret"] and result.error is None
    new = _secret(bb, 1)
    assert new != old
    assert _deliver(bb, old) == 202 and _deliver(bb, new) == 202   # during the overlap
    assert hooks.retire_expired() == 0
    with transaction() as session:
        retire_at = session.scalars(select(WebhookSecret.retire_at).where(
            WebhookSecret.retire_at.is_not(None))).one()
    time.sleep(max(0.0, (retire_at - utcnow()).total_seconds()) + 0.05)   # the overlap ends
    assert _deliver(bb, old) == 401 and _deliver(bb, new) == 202    # before beat has run, too
    assert hooks.retire_expired() == 1
    assert _deliver(bb, old) == 401 and _deliver(bb, new) != 401
    assert hooks.inspect("acme", client_factory=bb.factory)[0].ok
    assert setup_ledger()[-1].startswith("retired a rotated-out webhook secret")


def test_a_hook_whose_rotation_failed_keeps_its_old_secret_working(bb):
    hooks.register("acme", PUBLIC, client_factory=bb.factory)
    old = _secret(bb, 0)
    bb.state.faults.add(status=503, times=10, method="PUT", path=r"/hooks/")
    [result] = hooks.rotate("acme", timedelta(minutes=1), client_factory=bb.factory)
    assert result.error and "503" in result.error
    with transaction() as session:
        old_row = session.scalars(select(WebhookSecret).where(WebhookSecret.origin == "hooks")
                                  .order_by(WebhookSecret.id)).first()
        assert old_row.retire_at is None
    assert _deliver(bb, old) != 401
    assert hooks.inspect("acme", client_factory=bb.factory)[0].state.state == \
        "drifted: signs with a rotated-out secret"
    bb.state.faults.clear()
    assert hooks.register("acme", client_factory=bb.factory)[0].actions == ["repaired"]


def test_remove_deletes_ours_only_and_forgets_the_secret(bb):
    hooks.register("acme", PUBLIC, client_factory=bb.factory)
    [result] = hooks.remove("acme", client_factory=bb.factory)
    assert result.actions and result.actions[0].startswith("removed hook")
    assert ours(bb) == [] and len(listed(bb)) == 1     # the hand-made hook stays
    with transaction() as session:
        assert session.scalars(select(WebhookSecret.origin)).all() == ["given"]
        assert session.scalars(select(ConnectionHook)).all() == []
    assert hooks.registered() == []
    assert hooks.remove("acme", client_factory=bb.factory) == []


def test_a_hook_made_before_a_crash_and_never_recorded_is_adopted_and_given_our_secret(bb):
    hooks.register("acme", PUBLIC, client_factory=bb.factory)
    with transaction() as session:     # as if the process died after Bitbucket made the hook
        session.query(ConnectionHook).delete()
    [state] = hooks.inspect("acme", client_factory=bb.factory)
    assert state.state.state == "drifted: secret not known to be ours"
    [again] = hooks.register("acme", client_factory=bb.factory)
    assert (again.actions, again.state.state) == (["repaired"], "ok")
    assert len(ours(bb)) == 1
    with transaction() as session:
        assert session.scalars(select(ConnectionHook.hook_uuid)).one() == ours(bb)[0]["uuid"].strip("{}")
