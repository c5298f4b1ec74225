"""Several workers pushing one link at once: every public reply reaches Bitbucket once, in order.

Each ticket edit and reply queues a push of its link, so with two worker processes the pushes
of one link overlap; Bitbucket answers the writes slowly (the simulator's delay), which keeps
a push inside its remote call while the next one runs. Developer edits on Bitbucket go on at
the same time, and their webhooks queue pushes of their own.
"""
from __future__ import annotations

import random
import re
import threading
import uuid

import httpx2
import pytest

from config import mappings
from tests.integration.two_way import TwoWay

pytestmark = pytest.mark.integration

TICKETS = 3
ROUNDS = 8  # per ticket: a public reply, an internal note and a field edit each round


@pytest.fixture
def second_worker(running):
    name = f"worker-{uuid.uuid4().hex[:6]}"
    running.stack.start_worker(name)
    yield name
    running.stack.stop(name)


def _agent(tw: TwoWay, ticket_id: int, rng: random.Random, replies: list[str], errors: list) -> None:
    base = f"{tw.running.web_url}/api/tickets/{ticket_id}"
    try:
        with httpx2.Client(timeout=15, headers=tw.running.auth) as http:
            for n in range(ROUNDS):
                body = f"reply {n} on ticket {ticket_id} ({uuid.uuid4().hex[:6]})"
                assert http.post(f"{base}/comments", json={"body": body, "author": "Ana"}).status_code == 201
                replies.append(body)
                assert http.post(f"{base}/comments", json={"body": f"note {n} {uuid.uuid4().hex[:6]}",
                                                           "internal": True, "author": "Ana"}).status_code == 201
                field, values = rng.choice([("status", ("open", "pending", "on_hold")),
                                            ("priority", ("low", "normal", "high", "urgent"))])
                assert http.patch(base, json={field: rng.choice(values)}).status_code == 200
    except Exception as exc:  # noqa: BLE001 - reported by the test thread
        errors.append(exc)


def _developer(tw: TwoWay, issues: list[int], rng: random.Random, errors: list) -> None:
    try:
        for _ in range(ROUNDS):
            issue_id = rng.choice(issues)
            tw.api("PUT", f"/issues/{issue_id}", json=rng.choice(
                [{"priority": rng.choice(("minor", "major", "critical"))}, {"kind": rng.choice(("bug", "task"))}]))
    except Exception as exc:  # noqa: BLE001
        errors.append(exc)


def test_overlapping_pushes_on_two_workers_post_every_reply_once_and_in_order(running, simulator, second_worker):
    tw = TwoWay.setup(running, simulator)
    pairs = [tw.new_issue(title=f"Overlap {i}") for i in range(TICKETS)]
    tw.settle()
    # Slow writes to this repository: a push stays inside its POST while others run.
    tw.state.faults.slow(0.25, times=400, method="POST",
                         path=rf"/{re.escape(tw.repo)}/issues/\d+/(comments|changes)$")

    rng = random.Random(12)
    replies: dict[int, list[str]] = {ticket["id"]: [] for _, ticket in pairs}
    errors: list = []
    threads = [threading.Thread(target=_agent, args=(tw, t["id"], random.Random(rng.random()), replies[t["id"]], errors))
               for _, t in pairs]
    threads.append(threading.Thread(target=_developer, args=(tw, [i["id"] for i, _ in pairs],
                                                             random.Random(rng.random()), errors)))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    tw.settle(timeout=120)
    tw.state.faults.clear()

    tables = mappings.load()
    for issue, ticket in pairs:
        remote = [c["content"]["raw"] for c in tw.api("GET", f"/issues/{issue['id']}/comments",
                                                      params={"pagelen": 100})["values"] if c["content"]["raw"]]
        posted = [body.split("\n")[0] for body in remote]
        # Every reply exactly once, in the order the agent wrote them; no internal note.
        assert posted == replies[ticket["id"]], f"issue {issue['id']}: {posted}"
        local = tw.ticket(ticket["id"])
        remote_issue = tw.issue(issue["id"])
        for field, key in (("status", "state"), ("priority", "priority")):
            open_conflicts = tw.running.get("/api/conflicts", connection=tw.conn, state="open").json()
            assert (tables.to_bitbucket(field, local[field]) == remote_issue[key]
                    or tables.to_target(field, remote_issue[key]) == local[field]
                    or any(c["field"] == field for c in open_conflicts.get("conflicts", []))), (field, local, remote_issue)

    applied = [e for e in tw.ledger() if e["field"] == "comment" and e["direction"] == "reverse"
               and e["outcome"] == "applied"]
    assert len(applied) == TICKETS * ROUNDS, "one ledger line per reply posted"
    assert running.scalar(
        "select count(*) from outbox o join connections c on c.id = o.connection_id "
        "where c.name = :n and (o.state <> 'sent' or o.claimed_until is not null)", n=tw.conn) == 0
    # Both workers took part.
    for name in ("worker", second_worker):
        assert "bbsync.push_link" in (running.stack.log_dir / f"{name}.log").read_text(errors="replace"), name
