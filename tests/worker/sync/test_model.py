"""Model-based property test of the whole sync: random edits on both sides, with webhooks
dropped, duplicated and reordered, workers crashing between a remote write and its commit,
429/5xx from Bitbucket, and two pushes of one link overlapping (the second runs whole while the
first is inside its remote call). After quiescence and one reconciliation, both sides agree on every
synced field (or an open conflict names the disagreement), no comment exists twice, and every
delivery is accounted for in the ledger.

Fast profile by default (CI); the long one: BBSYNC_MODEL_EXAMPLES=300 BBSYNC_MODEL_STEPS=60.
A failure prints the steps that produced it and hypothesis replays it from its database; a
seed can be pinned with `--hypothesis-seed=N`.
"""
from __future__ import annotations

import os
import random
import shutil
import tempfile

import httpx2
from cryptography.fernet import Fernet
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule
from sqlalchemy import func, select

from config import mappings
from simulator.app import create_app as create_simulator
from simulator.state import SimulatorState
from tests.conftest import authorized
from webhooks import create_app
from worker import connections
from worker.bitbucket.auth import ApiTokenAuth
from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.credentials import parse_api_token
from worker.bitbucket.errors import BitbucketError
from worker.db.helpdesk import TicketComment
from worker.db.models import CommentLink, Conflict, Delivery, LedgerEntry, Link
from worker.db.session import transaction
from worker.sync import forward, push, reconcile, reverse, reverse_comments
from tests.worker.sync.conftest import let_claims_lapse

SIM, REPO, TOKEN = "https://bitbucket.test", "acme/model", "sync@acme.example:token"
FIELDS = {"status": ("state", ("new", "open", "pending", "on_hold", "solved", "closed"),
                     ("new", "open", "on hold", "resolved", "duplicate", "wontfix", "closed")),
          "priority": ("priority", ("low", "normal", "high", "urgent"),
                       ("trivial", "minor", "major", "critical", "blocker"))}
EXAMPLES = int(os.environ.get("BBSYNC_MODEL_EXAMPLES", "12"))
STEPS = int(os.environ.get("BBSYNC_MODEL_STEPS", "25"))


def _fresh_environment() -> str:
    from config.settings import get_settings
    from worker import crypto
    from worker.db import migrate
    tmp = tempfile.mkdtemp(prefix="bbsync-model-")
    os.environ.update(BBSYNC_VAR_DIR=os.path.join(tmp, "var"), BBSYNC_SECRET_KEYS=Fernet.generate_key().decode())
    for name in ("DATABASE_URL", "REDIS_URL", "BROKER_URL"):
        os.environ.pop(name, None)
    get_settings.cache_clear()
    crypto._cipher.cache_clear()
    migrate.upgrade()
    return tmp


class SyncModel(RuleBasedStateMachine):
    @initialize(n_issues=st.integers(1, 2))
    def setup(self, n_issues):
        self.saved_env = {k: os.environ.get(k) for k in ("BBSYNC_VAR_DIR", "BBSYNC_SECRET_KEYS")}
        self.tmp = _fresh_environment()
        self.web_app = create_app(enqueue=lambda task, arg: True)
        self.web = authorized(self.web_app.test_client())
        with transaction() as session:
            conn, _ = connections.upsert(session, connections.ConnectionSpec(
                name="model", repos=(REPO,), webhook_secrets=("s3cret",), api_url=f"{SIM}/2.0",
                api_token=TOKEN))
            self.conn_id = conn.id
        self.state = SimulatorState(public_url=SIM, transport=httpx2.WSGITransport(app=self.web_app))
        self.client = BitbucketClient(f"{SIM}/2.0", ApiTokenAuth(parse_api_token(TOKEN)),
                                      transport=httpx2.WSGITransport(app=create_simulator(self.state)),
                                      sleep=lambda s: None)
        self.dev = httpx2.Client(base_url=f"{SIM}/2.0/repositories/{REPO}", auth=("dev@acme.example", "x"),
                                 transport=httpx2.WSGITransport(app=create_simulator(self.state)))
        self.api("POST", "", json={"scm": "git", "has_issues": True})
        self.api("POST", "/hooks", json={"url": "http://bbsync.test/webhooks/bitbucket/model",
                                         "secret": "s3cret", "active": True,
                                         "events": ["issue:created", "issue:updated", "issue:comment_created"]})
        self.issues = [self.api("POST", "/issues", json={"title": f"issue {i}"})["id"] for i in range(n_issues)]
        self.deliver(reorder=None)
        self.tickets = {i: self.ticket_for(i) for i in self.issues}
        self.rng = random.Random(0)

    def teardown(self):
        if not hasattr(self, "tmp"):
            return
        try:
            self.quiesce_and_check()
        finally:
            self.client.close()
            self.dev.close()
            self.state.close()
            shutil.rmtree(self.tmp, ignore_errors=True)
            for k, v in self.saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    # --- helpers -------------------------------------------------------------------------
    def api(self, method, path, **kw):
        url = f"{SIM}/2.0/repositories/{REPO}{path}"
        for _ in range(200):  # injected faults hit the developer too; a person tries again
            r = self.dev.request(method, url, **kw)
            if r.status_code not in (429, 500, 502, 503):
                break
        assert r.status_code < 300, r.text
        return r.json() if r.content else {}

    def ticket_for(self, issue_id):
        tickets = self.web.get("/api/tickets", query_string={"connection": "model", "bitbucket_repo": REPO,
                                                             "bitbucket_issue": issue_id}).json["tickets"]
        return tickets[0]["id"] if tickets else None

    def deliver(self, reorder, duplicate=False):
        """Play the worker for every stored delivery, in arrival or shuffled order."""
        assert self.state.wait_for_deliveries(10)
        with transaction() as session:
            ids = list(session.scalars(select(Delivery.id).where(Delivery.status == "received")
                                       .order_by(Delivery.received_at)))
        if reorder is not None:
            reorder.shuffle(ids)
        for delivery_id in ids + (ids[:1] if duplicate else []):
            with transaction() as session:
                forward.process_delivery(session, delivery_id)

    def links(self):
        with transaction() as session:
            return list(session.scalars(select(Link.id)))

    def push_all(self):
        for link_id in self.links():
            try:
                push.push_link(link_id, client_factory=lambda _c: self.client)
            except BitbucketError:
                pass  # retryable: the task would run again; quiesce does

    # --- rules ---------------------------------------------------------------------------
    @rule(i=st.integers(0, 1), field=st.sampled_from(sorted(FIELDS)), data=st.data())
    def developer_edits(self, i, field, data):
        key, _, values = FIELDS[field]
        self.api("PUT", f"/issues/{self.issues[i % len(self.issues)]}", json={key: data.draw(st.sampled_from(values))})

    @rule(i=st.integers(0, 1), field=st.sampled_from(sorted(FIELDS)), data=st.data())
    def agent_edits(self, i, field, data):
        _, values, _ = FIELDS[field]
        ticket = self.tickets[self.issues[i % len(self.issues)]]
        r = self.web.patch(f"/api/tickets/{ticket}", json={field: data.draw(st.sampled_from(values))})
        assert r.status_code == 200, r.json

    @rule(i=st.integers(0, 1))
    def developer_comments(self, i):
        self.api("POST", f"/issues/{self.issues[i % len(self.issues)]}/comments",
                 json={"content": {"raw": f"dev {self.rng.random()}"}})

    @rule(i=st.integers(0, 1), internal=st.booleans())
    def agent_replies(self, i, internal):
        ticket = self.tickets[self.issues[i % len(self.issues)]]
        r = self.web.post(f"/api/tickets/{ticket}/comments",
                          json={"body": f"agent {self.rng.random()}", "internal": internal, "author": "Ana"})
        assert r.status_code == 201

    @rule()
    def a_webhook_is_lost(self):
        self.state.faults.drop_webhooks(times=1)

    @rule(status=st.sampled_from([429, 500, 503]), times=st.integers(1, 6))
    def bitbucket_misbehaves(self, status, times):
        self.state.faults.add(status=status, times=times, method="POST")

    @rule(seed=st.integers(0, 2**16), duplicate=st.booleans())
    def webhooks_arrive(self, seed, duplicate):
        self.deliver(random.Random(seed), duplicate)

    @rule(crash=st.sampled_from(["none", "after_plan", "after_send"]))
    def worker_pushes(self, crash):
        for link_id in self.links():
            if crash == "none":
                try:
                    push.push_link(link_id, client_factory=lambda _c: self.client)
                except BitbucketError:
                    pass
                continue
            with transaction() as session:
                plan = reverse.plan_fields(session, link_id)
            if plan is not None and crash == "after_send":
                try:  # the write reaches Bitbucket, then the worker dies before recording it
                    self.client.post_change(plan.repo, plan.issue_id, plan.change_body(), retry_unsafe=True)
                except BitbucketError:
                    pass
            with transaction() as session:
                items = reverse_comments.plan_comments(session, link_id)
            for item in items:
                if crash == "after_send":
                    try:  # as push_link would, up to the crash: a resumed post looks first
                        if not (item.resume and push._find_posted(self.client, item)):
                            self.client.create_comment(item.repo, item.issue_id, item.body)
                    except BitbucketError:
                        pass

    @rule()
    def two_pushes_overlap(self):
        """Each ticket edit queues a push, so two pushes of one link run at once on two
        workers: here the second runs whole while the first is inside its remote call."""
        for link_id in self.links():
            def second(link_id=link_id):
                try:
                    push.push_link(link_id, client_factory=lambda _c: self.client)
                except BitbucketError:
                    pass
            first = Interleaved(self.client, second)
            try:
                push.push_link(link_id, client_factory=lambda _c: first)
            except BitbucketError:
                pass

    @rule()
    def time_passes(self):
        """Long enough for the claims of a worker that died mid-push to lapse."""
        let_claims_lapse()

    def story(self, link_id: int, field: str) -> str:
        """The ledger of one link and field, oldest first: what a person would read."""
        with transaction() as session:
            rows = session.scalars(select(LedgerEntry).where(
                LedgerEntry.link_id == link_id, LedgerEntry.field.in_((field, None)))
                .order_by(LedgerEntry.id))
            lines = [f"{e.direction:<7} {e.outcome:<8} old={e.old_value!r} new={e.new_value!r} "
                     f"bb={e.bitbucket_value!r} t={e.target_value!r} {e.detail or ''}" for e in rows]
            stuck = [f"delivery {d.id} {d.status}: {d.error}" for d in session.scalars(
                select(Delivery).where(Delivery.status.in_(("failed", "held", "received"))))]
            return "\n".join(lines + stuck)

    # --- the properties --------------------------------------------------------------------
    def quiesce_and_check(self):
        self.state.faults.clear()
        let_claims_lapse()
        for _ in range(6):
            self.deliver(reorder=None)
            self.push_all()
        report = reconcile.reconcile_connection(self.conn_id, client_factory=lambda _c: self.client,
                                                comments="changed")
        for _ in range(4):
            for delivery_id in getattr(report, "enqueue", []):
                with transaction() as session:
                    forward.process_delivery(session, delivery_id)
            self.deliver(reorder=None)
            self.push_all()
            report = reconcile.reconcile_connection(self.conn_id, client_factory=lambda _c: self.client,
                                                comments="changed")
        self.deliver(reorder=None)

        tables = mappings.load()
        with transaction() as session:
            open_conflicts = {(c.link_id, c.field) for c in session.scalars(
                select(Conflict).where(Conflict.state == "open"))}
            links = {l.bitbucket_issue_id: l for l in session.scalars(select(Link))}
        for issue_id in self.issues:
            remote = self.api("GET", f"/issues/{issue_id}")
            local = self.web.get(f"/api/tickets/{self.tickets[issue_id]}").json
            for field, (key, _, _) in FIELDS.items():
                agree = (tables.to_target(field, remote[key]) == local[field]
                         or tables.to_bitbucket(field, local[field]) == remote[key])
                assert agree or (links[issue_id].id, field) in open_conflicts, (
                    f"issue {issue_id} {field}: Bitbucket {remote[key]!r}, helpdesk {local[field]!r}\n"
                    + self.story(links[issue_id].id, field))
            # No comment twice, on either side.
            remote_bodies = [c["content"]["raw"] for c in self.api("GET", f"/issues/{issue_id}/comments",
                                                                   params={"pagelen": 100})["values"]
                             if c["content"]["raw"]]
            assert len(remote_bodies) == len(set(remote_bodies)), "a comment exists twice on Bitbucket"
            local_bodies = [c["body"] for c in local["comments"]]
            assert len(local_bodies) == len(set(local_bodies)), "a comment exists twice in the helpdesk"
            public = [c["body"] for c in local["comments"] if not c["internal"]]
            for body in public:
                assert sum(1 for r in remote_bodies if r.startswith(body)) == 1, f"reply {body!r} not on Bitbucket once"
            for body in remote_bodies:
                if "bbsync:" not in body:
                    assert local_bodies.count(body) == 1, f"Bitbucket comment {body!r} not noted once"
            assert not any("agent" in b and "via the helpdesk" in b for b in remote_bodies
                           if any(b.startswith(c["body"]) for c in local["comments"] if c["internal"])), \
                "an internal note leaked"
        with transaction() as session:
            waiting = session.scalar(select(func.count()).select_from(Delivery).where(
                Delivery.status.in_(("received", "failed", "held"))))
            assert waiting == 0, "a delivery was not processed"
            unaccounted = session.scalar(select(func.count()).select_from(Delivery).where(
                ~select(LedgerEntry.id).where(LedgerEntry.delivery_id == Delivery.id).exists()))
            assert unaccounted == 0, "a delivery left no trace in the ledger"
            dup_links = session.execute(select(CommentLink.bitbucket_comment_id, func.count())
                                        .group_by(CommentLink.bitbucket_comment_id)
                                        .having(func.count() > 1)).all()
            assert not dup_links
            assert session.scalar(select(func.count()).select_from(TicketComment)) == \
                session.scalar(select(func.count(func.distinct(TicketComment.body))))


class Interleaved:
    """A Bitbucket client that, at its first write, lets another push run before the write
    goes out: the overlap of two workers, without threads, at the worst moment."""

    def __init__(self, client, meanwhile):
        self._client, self._meanwhile = client, meanwhile

    def __getattr__(self, name):
        return getattr(self._client, name)

    def _first_write(self):
        meanwhile, self._meanwhile = self._meanwhile, None
        if meanwhile is not None:
            meanwhile()

    def post_change(self, *args, **kwargs):
        self._first_write()
        return self._client.post_change(*args, **kwargs)

    def create_comment(self, *args, **kwargs):
        self._first_write()
        return self._client.create_comment(*args, **kwargs)


SyncModel.TestCase.settings = settings(
    max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
test_sync_model = SyncModel.TestCase
