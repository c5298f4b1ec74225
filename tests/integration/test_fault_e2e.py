"""End to end under faults: two workers, a web process, the simulator, PostgreSQL and Redis.
Workers are killed and restarted and Redis is cut off while both sides keep editing; at the
end both sides agree (or an open conflict says why not) and nothing is lost or duplicated."""
from __future__ import annotations

import os
import random
import signal
import time
import uuid

import httpx2
import pytest
from cryptography.fernet import Fernet

from config import mappings
from tests.integration.conftest import REDIS_URL, Running, _create_database, require_services
from tests.integration.simulator_server import serve_simulator
from tests.integration.tcp_proxy import TcpProxy
from tests.integration.two_way import AUTH, EVENTS, wait_for
from worker.db.session import make_engine
from devstack.stack import Stack

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("BBSYNC_FAULT_SEED", "20261129"))
OPERATIONS = int(os.environ.get("BBSYNC_FAULT_OPERATIONS", "40"))
FIELDS = {"status": ("state", ["new", "open", "on_hold", "solved", "closed"],
                     ["new", "open", "on hold", "resolved", "closed", "duplicate"]),
          "priority": ("priority", ["low", "normal", "high", "urgent"],
                       ["trivial", "minor", "major", "critical", "blocker"])}


@pytest.fixture
def faulty(tmp_path):
    require_services()
    proxy = TcpProxy(int(REDIS_URL.rsplit(":", 1)[1].split("/")[0]))
    db_url, drop = _create_database()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env.update(DATABASE_URL=db_url, REDIS_URL=f"redis://127.0.0.1:{proxy.port}/0",
               BBSYNC_VAR_DIR=str(tmp_path / "var"), BBSYNC_SECRET_KEYS=Fernet.generate_key().decode(),
               BBSYNC_QUEUE=f"bbsync-e2e-{uuid.uuid4().hex[:8]}", BBSYNC_VISIBILITY_TIMEOUT="6")
    stack = Stack(env=env, log_dir=tmp_path)
    stack.run("db", "upgrade")
    for name in ("worker-a", "worker-b"):
        stack.start_worker(name)
    web = stack.start_web(workers=2, threads=4)
    engine = make_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with serve_simulator() as (state, sim_url):
        yield Running("services", stack, web, engine), proxy, state, sim_url
    stack.close()
    engine.dispose()
    proxy.close()
    drop()


@pytest.fixture
def clients():
    made: list[httpx2.Client] = []

    def make(**kw) -> httpx2.Client:
        made.append(httpx2.Client(**kw))
        return made[-1]
    yield make
    for c in made:
        c.close()


def test_both_sides_converge_with_nothing_lost_or_duplicated_under_faults(faulty, clients):
    run, proxy, state, sim_url = faulty
    rng = random.Random(SEED)
    tables = mappings.load()
    repo, conn, secret = "acme/chaos", "chaos", "s3cret-" + uuid.uuid4().hex
    run.stack.run("connection", "add", conn, "--repo", repo, "--webhook-secret", secret,
                  "--api-url", f"{sim_url}/2.0", "--api-token", "bbsync@acme.example:sync-token")
    bb = clients(auth=AUTH, timeout=15)
    hd = clients(base_url=f"{run.web_url}/api", timeout=30, headers=run.auth)
    assert httpx2.post(f"{sim_url}/2.0/repositories/{repo}", auth=AUTH,
                       json={"scm": "git", "has_issues": True}).status_code == 200
    bb.post(f"{sim_url}/2.0/repositories/{repo}/hooks", json={
        "url": f"{run.web_url}/webhooks/bitbucket/{conn}", "secret": secret, "active": True,
        "events": EVENTS}).raise_for_status()
    issues = [bb.post(f"{sim_url}/2.0/repositories/{repo}/issues", json={"title": f"chaos {i}"}).json()["id"]
              for i in range(3)]

    def ticket_of(issue_id):
        found = hd.get("/tickets", params={"connection": conn, "bitbucket_repo": repo,
                                           "bitbucket_issue": issue_id}).json()["tickets"]
        return found[0] if found else None
    tickets = {i: wait_for(lambda i=i: ticket_of(i), 60, "tickets created")["id"] for i in issues}

    replies, bb_comments = [], []
    for step in range(OPERATIONS):
        issue_id = rng.choice(issues)
        action = rng.random()
        if action < 0.35:
            field = rng.choice(list(FIELDS))
            key, _, bb_values = FIELDS[field]
            r = bb.put(f"{sim_url}/2.0/repositories/{repo}/issues/{issue_id}", json={key: rng.choice(bb_values)})
            assert r.status_code == 200
        elif action < 0.7:
            field = rng.choice(list(FIELDS))
            _, values, _ = FIELDS[field]
            r = hd.patch(f"/tickets/{tickets[issue_id]}", json={field: rng.choice(values)})
            assert r.status_code == 200, r.text
        elif action < 0.85:
            body = f"reply {step} {uuid.uuid4().hex[:6]}"
            assert hd.post(f"/tickets/{tickets[issue_id]}/comments", json={"body": body, "author": "Ana"}).status_code == 201
            replies.append(body)
        else:
            body = f"dev note {step} {uuid.uuid4().hex[:6]}"
            bb.post(f"{sim_url}/2.0/repositories/{repo}/issues/{issue_id}/comments",
                    json={"content": {"raw": body}}).raise_for_status()
            bb_comments.append(body)
        fault = rng.random()
        if fault < 0.08:  # a worker dies mid-stream and comes back
            name = rng.choice(["worker-a", "worker-b"])
            proc = run.stack.procs.get(name)
            if proc is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                run.stack.procs.pop(name).wait()
                run.stack.start_worker(name)
        elif fault < 0.12:  # Redis goes away for a moment
            proxy.cut()
            time.sleep(rng.uniform(0.5, 2.0))
            proxy.restore()
        time.sleep(rng.uniform(0, 0.15))

    # Quiescence: webhooks delivered, deliveries processed, outbox drained.
    assert state.wait_for_deliveries(60)

    def quiet():
        d = hd.get("/deliveries", params={"connection": conn}).json()["counts"]
        o = hd.get("/outbox", params={"connection": conn}).json()["counts"]
        return not d.get("received") and not o.get("pending") and not o.get("sending")
    wait_for(quiet, 180, "quiescence")
    assert state.wait_for_deliveries(60)
    wait_for(quiet, 180, "quiescence after echoes")

    counts = hd.get("/deliveries", params={"connection": conn}).json()["counts"]
    assert not counts.get("failed") and not counts.get("held"), counts
    open_conflicts = {(c["ticket"], c["field"]) for c in
                      hd.get("/conflicts", params={"connection": conn, "state": "open"}).json()["conflicts"]}
    for issue_id in issues:
        remote = bb.get(f"{sim_url}/2.0/repositories/{repo}/issues/{issue_id}").json()
        local = hd.get(f"/tickets/{tickets[issue_id]}").json()
        for field, (key, _, _) in FIELDS.items():
            agree = (tables.to_target(field, remote[key]) == local[field]
                     or tables.to_bitbucket(field, local[field]) == remote[key])
            if not (agree or (tickets[issue_id], field) in open_conflicts):
                story = [f"{e['time'][11:23]} {e['direction']:<7} {e['outcome']:<8} {e['field']} "
                         f"old={e['old']!r} new={e['new']!r} bb={e['bitbucket_value']!r} "
                         f"t={e['target_value']!r} {e['detail'] or ''}"
                         for e in reversed(hd.get("/ledger", params={"connection": conn, "limit": 500}).json()["entries"])
                         if e["field"] in (field, None)]
                pytest.fail(f"issue {issue_id} {field}: Bitbucket {remote[key]!r}, helpdesk {local[field]!r}, "
                            f"seed {SEED}\n" + "\n".join(story))
        # Comments: every developer note became exactly one internal note, every reply one comment.
        remote_bodies = [c["content"]["raw"] for c in bb.get(
            f"{sim_url}/2.0/repositories/{repo}/issues/{issue_id}/comments", params={"pagelen": 100}).json()["values"]
            if c["content"]["raw"]]
        local_bodies = [c["body"] for c in local["comments"]]
        for body in [b for b in replies if b in local_bodies]:
            assert sum(1 for r in remote_bodies if r.startswith(body)) == 1, f"reply {body!r} lost or duplicated"
        for body in [b for b in bb_comments if b in remote_bodies]:
            assert local_bodies.count(body) == 1, f"developer note {body!r} lost or duplicated"
    all_local = [c["body"] for i in issues for c in hd.get(f"/tickets/{tickets[i]}").json()["comments"]]
    assert sorted(b for b in all_local if b in replies) == sorted(replies), "a reply was lost"
    assert sorted(b for b in all_local if b in bb_comments) == sorted(bb_comments), "a developer note was lost"
