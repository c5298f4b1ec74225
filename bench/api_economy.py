"""Bitbucket API economy of two-way sync, against a naive client in the same run.

    .venv/bin/python bench/api_economy.py [--edits 40] [--issues K] [--seed 1] [--interval 0.05]

Needs PostgreSQL and Redis (TEST_POSTGRES_URL / TEST_REDIS_URL, defaults on 127.0.0.1). The web
app (gunicorn) and a celery worker run as real processes on a fresh database and queue; the
Bitbucket simulator runs in this process on a loopback port and fires real signed webhooks.

The scenario: K issues are created in the simulator (their webhooks create the tickets), then N
helpdesk edits (PATCH /api/tickets/ID, 1-3 of status/priority/type/title) and N Bitbucket edits
(PUT on the simulator's issues) are interleaved, and the run waits for quiescence. The design's
promises measured here: forward sync makes ZERO Bitbucket reads per event; reverse sync makes
ONE Bitbucket write per batch of field changes on one issue.

Who made a call: three distinct Basic credentials (the product's connection, this script's
own setup/edits, the naive baseline). The simulator's `state.request_log` records only
(method, path, status), so the simulator's WSGI app is wrapped here with a recorder that adds
the Basic username of each /2.0 request; its totals are checked against `state.request_log`
and the product's count against its own budget meter (the `api_budget` table).

The baseline is a naive client that, for every field change of the same N helpdesk edits,
re-reads the issue and then writes that one field (GET + PUT, no batching), against a mirror
repository without webhooks in the same simulator.

Reverse latency: from the PATCH returning to the moment the simulator's issue shows the value,
watched in-process on the simulator's fired events every 2 ms (no HTTP polling). An edit whose
field is edited again (on either side) before its value was seen is counted as superseded, not
timed.

Quiescence: webhooks delivered, no delivery `received`, the outbox drained. If work is still
pending but nothing has moved for 15 s (or after --timeout), the run stops waiting and reports
what was left. Anything off target (reads, writes per batch, stuck outbox rows, 5xx answers,
issues whose ticket disagrees at the end, edits that never reached Bitbucket) is listed under
ODD. The product is measured as it is: nothing here works around it.
"""
from __future__ import annotations

import argparse
import base64
import binascii
import io
import json
import logging
import os
import random
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from config import mappings  # noqa: E402
from config.enums import BITBUCKET, TARGET  # noqa: E402
from simulator.app import create_app  # noqa: E402
from simulator.state import SimulatorState  # noqa: E402
from devstack.stack import Stack  # noqa: E402

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
EVENTS = ["issue:created", "issue:updated", "issue:comment_created"]

PRODUCT = ("bbsync-product@bench.example", "product-api-token")   # the connection's credential
DRIVER = ("bench-driver@bench.example", "driver-api-token")       # this script's setup and edits
NAIVE = ("naive-client@bench.example", "naive-api-token")         # the baseline

BB_KEY = {"status": "state", "priority": "priority", "type": "kind", "title": "title"}
HELPDESK_FIELDS = ("status", "priority", "type", "title")
PATCH_ATTEMPTS = 3


# -- who called the simulator ----------------------------------------------------------------

class Call(NamedTuple):
    at: float           # time.monotonic() when the response started
    who: str            # the Basic username, or "-" without Basic credentials
    method: str
    path: str
    status: int
    body: dict | None   # JSON body of the product's writes (to see what each write carried)


class CallRecorder:
    """WSGI middleware around the simulator app: every /2.0 call with its Basic username."""

    def __init__(self, app) -> None:
        self.app = app
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if not (path == "/2.0" or path.startswith("/2.0/")):
            return self.app(environ, start_response)
        who = _basic_user(environ.get("HTTP_AUTHORIZATION", ""))
        method = environ.get("REQUEST_METHOD", "")
        body = None
        if who == PRODUCT[0] and method != "GET":
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(raw)
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None

        def recording_start_response(status, headers, exc_info=None):
            with self._lock:
                self.calls.append(Call(time.monotonic(), who, method, path,
                                       int(status.split()[0]), body))
            return start_response(status, headers, exc_info)

        return self.app(environ, recording_start_response)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)


def _basic_user(header: str) -> str:
    scheme, _, credential = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return "-"
    try:
        return base64.b64decode(credential.strip(), validate=True).decode().partition(":")[0]
    except (binascii.Error, UnicodeDecodeError):
        return "-"


@contextmanager
def serve_simulator() -> Iterator[tuple[SimulatorState, str, CallRecorder]]:
    """The simulator on a loopback port, in a thread of this process, behind the recorder."""
    state = SimulatorState()
    recorder = CallRecorder(create_app(state))
    server = make_server("127.0.0.1", 0, recorder, threaded=True)
    url = f"http://127.0.0.1:{server.port}"
    state.public_url = url
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, url, recorder
    finally:
        server.shutdown()
        server.server_close()
        state.close()


# -- watching the simulator for reverse propagation ------------------------------------------

@dataclass
class Expect:
    """A helpdesk edit, waiting for its values to show on the simulator's issue."""

    edit: int
    issue: int
    accepted: dict[str, set[str]]      # Bitbucket key -> values equivalent to the edit's value
    values: dict[str, str]             # the edit, in helpdesk names
    start_event: int                   # index in state.events when the PATCH was about to go
    returned_at: float | None = None
    seen_at: float | None = None
    superseded: bool = False


class Watcher:
    """Scans the simulator's fired events (in-process, every `interval` s) for the moment each
    expected value shows on the issue; an issue:updated event carries the issue as it is after
    the edit, and every change to an issue fires one."""

    def __init__(self, state: SimulatorState, repo: str, interval: float = 0.002) -> None:
        self.state, self.repo, self.interval = state, repo, interval
        self.pending: dict[int, list[Expect]] = {}
        self.all: list[Expect] = []
        self._cursor = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-watcher", daemon=True)

    def start(self) -> None:
        self._cursor = len(self.state.events)
        self._thread.start()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self.poll()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        with self._lock:
            now = time.monotonic()
            events = self.state.events
            end = len(events)
            for i in range(self._cursor, end):
                ev = events[i]
                if ev.repository != self.repo or ev.event_key != "issue:updated":
                    continue
                issue = ev.payload["issue"]
                waiting = self.pending.get(issue["id"], [])
                for exp in [e for e in waiting if e.start_event <= i]:
                    if all(issue.get(key) in ok for key, ok in exp.accepted.items()):
                        exp.seen_at = now
                        waiting.remove(exp)
            self._cursor = end

    def expect(self, edit: int, issue: int, accepted: dict[str, set[str]],
               values: dict[str, str]) -> Expect:
        with self._lock:
            exp = Expect(edit, issue, accepted, values, start_event=len(self.state.events))
            self.pending.setdefault(issue, []).append(exp)
            self.all.append(exp)
            return exp

    def drop(self, exp: Expect) -> None:
        with self._lock:
            self.all.remove(exp)
            if exp in self.pending.get(exp.issue, []):
                self.pending[exp.issue].remove(exp)

    def supersede(self, issue: int, keys: set[str]) -> None:
        """Another edit of these fields is about to go: earlier edits not yet seen can no
        longer be timed."""
        self.poll()
        with self._lock:
            waiting = self.pending.get(issue, [])
            for exp in [e for e in waiting if keys & set(e.accepted)]:
                exp.superseded = True
                waiting.remove(exp)


# -- the scenario ----------------------------------------------------------------------------

@dataclass
class Edit:
    side: str                 # "helpdesk" | "bitbucket"
    index: int                # per side
    issue_slot: int           # index into the K issues
    fields: list[str]         # helpdesk names (status/priority/type/title)
    picks: list[float]        # one random number per field, to choose among the valid values
    values: dict[str, str] = field(default_factory=dict)   # what was sent (helpdesk names)


def plan(rng: random.Random, edits: int, issues: int) -> list[Edit]:
    """The interleaved edits, fixed by the seed (values are picked at run time among the ones
    that really change something, using `picks`)."""
    order = ["helpdesk"] * edits + ["bitbucket"] * edits
    rng.shuffle(order)
    counters = Counter()
    out = []
    for side in order:
        n = rng.randint(1, 3)
        fields = rng.sample(HELPDESK_FIELDS, n)
        out.append(Edit(side, counters[side], rng.randrange(issues), fields,
                        [rng.random() for _ in fields]))
        counters[side] += 1
    return out


def accepted_values(tables, name: str, target_value: str) -> set[str]:
    """Bitbucket values that show a helpdesk value (lossy maps: `closed` shows as any of
    invalid/duplicate/wontfix/closed)."""
    if name == "title":
        return {target_value}
    want = tables.to_target(name, tables.to_bitbucket(name, target_value))
    return {b for b in BITBUCKET[name] if tables.to_target(name, b) == want}


class Bench:
    def __init__(self, state: SimulatorState, sim_url: str, web_url: str, conn: str, repo: str,
                 tables, interval: float) -> None:
        self.state, self.sim_url, self.web_url = state, sim_url, web_url
        self.conn, self.repo, self.tables, self.interval = conn, repo, tables, interval
        self.sim = httpx2.Client(base_url=f"{sim_url}/2.0", auth=DRIVER, timeout=15)
        self.web = httpx2.Client(base_url=web_url, timeout=15)
        self.issue_ids: list[int] = []
        self.ticket_ids: list[int] = []
        self.watcher = Watcher(state, repo)
        self.patch_errors: list[tuple[int, int, int]] = []   # (edit, ticket, status) answered != 200

    def close(self) -> None:
        self.sim.close()
        self.web.close()

    def sim_call(self, method: str, path: str, **kwargs) -> dict:
        r = self.sim.request(method, path, **kwargs)
        if r.status_code >= 300:
            raise RuntimeError(f"simulator {method} {path}: {r.status_code} {r.text[:300]}")
        return r.json() if r.content else {}

    def remote(self, issue_id: int) -> dict:
        """The simulator's issue, read in-process (not an API call: not in the request log)."""
        ws, slug = self.repo.split("/")
        return self.state.get_issue(ws, slug, issue_id)

    def setup(self, issues: int, secret: str, timeout: float) -> None:
        self.sim_call("POST", f"/repositories/{self.repo}", json={"scm": "git", "has_issues": True})
        self.sim_call("POST", f"/repositories/{self.repo}/hooks", json={
            "url": f"{self.web_url}/webhooks/bitbucket/{self.conn}", "secret": secret,
            "active": True, "events": EVENTS})
        for i in range(issues):
            issue = self.sim_call("POST", f"/repositories/{self.repo}/issues", json={
                "title": f"Issue {i + 1}", "kind": "bug", "priority": "major"})
            self.issue_ids.append(issue["id"])
        for issue_id in self.issue_ids:
            self.ticket_ids.append(self._wait_ticket(issue_id, timeout))

    def _wait_ticket(self, issue_id: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            counts = self.web.get("/api/deliveries", params={"connection": self.conn}).json()["counts"]
            if counts.get("failed"):
                raise RuntimeError(f"setup: {counts['failed']} webhook deliveries failed in the "
                                   f"worker (see its log under var/)")
            tickets = self.web.get("/api/tickets", params={
                "connection": self.conn, "bitbucket_repo": self.repo,
                "bitbucket_issue": issue_id}).json()["tickets"]
            if tickets:
                return tickets[0]["id"]
            time.sleep(0.05)
        raise TimeoutError(f"no ticket for {self.repo}#{issue_id} within {timeout:.0f} s")

    def run(self, edits: list[Edit]) -> None:
        """The edits, one every `interval` s. The watcher keeps running until stopped (after
        quiescence: the last edits' values arrive after the loop ends)."""
        self.watcher.start()
        for edit in edits:
            (self._helpdesk if edit.side == "helpdesk" else self._bitbucket)(edit)
            time.sleep(self.interval)

    def _helpdesk(self, edit: Edit) -> None:
        issue_id, ticket_id = self.issue_ids[edit.issue_slot], self.ticket_ids[edit.issue_slot]
        ticket = self.web.get(f"/api/tickets/{ticket_id}").json()
        remote = self.remote(issue_id)
        body, accepted = {}, {}
        for name, pick in zip(edit.fields, edit.picks):
            if name == "title":
                value = f"Issue {edit.issue_slot + 1} (helpdesk edit {edit.index})"
            else:
                key = BB_KEY[name]
                choices = [v for v in TARGET[name] if v != ticket[name]
                           and remote[key] not in accepted_values(self.tables, name, v)]
                if not choices:
                    continue
                value = choices[int(pick * len(choices))]
            body[name] = value
            accepted[BB_KEY[name]] = accepted_values(self.tables, name, value)
        if not body:
            return
        edit.values = body
        self.watcher.supersede(issue_id, set(accepted))
        exp = self.watcher.expect(edit.index, issue_id, accepted, body)
        for attempt in range(1, PATCH_ATTEMPTS + 1):
            r = self.web.patch(f"/api/tickets/{ticket_id}", json=body)
            exp.returned_at = time.monotonic()
            if r.status_code == 200:
                return
            self.patch_errors.append((edit.index, ticket_id, r.status_code))
            if r.status_code < 500 or attempt == PATCH_ATTEMPTS:
                break
            time.sleep(0.05)  # a 5xx rolled the edit back: send it again, as a person would
        # Given up: the edit did not happen; it is left out of every count.
        edit.values = {}
        self.watcher.drop(exp)

    def _bitbucket(self, edit: Edit) -> None:
        issue_id = self.issue_ids[edit.issue_slot]
        remote = self.remote(issue_id)
        body = {}
        for name, pick in zip(edit.fields, edit.picks):
            key = BB_KEY[name]
            if name == "title":
                body[key] = f"Issue {edit.issue_slot + 1} (Bitbucket edit {edit.index})"
            else:
                choices = [v for v in BITBUCKET[name] if v != remote[key]]
                body[key] = choices[int(pick * len(choices))]
        edit.values = body
        self.watcher.supersede(issue_id, set(body))
        self.sim_call("PUT", f"/repositories/{self.repo}/issues/{issue_id}", json=body)

    # -- quiescence ---------------------------------------------------------------------------

    def settle(self, db_url: str, timeout: float, stall: float = 15.0) -> str | None:
        """Wait for quiescence: the simulator's webhooks delivered, no delivery `received`, the
        outbox drained, and nothing moving for a moment. Returns None then; otherwise (after
        `timeout`, or after `stall` seconds in which nothing at all moved while work was still
        pending) what was left, so the report can say it."""
        deadline = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while True:
            delivered = self.state.wait_for_deliveries(0.5)
            received, outbox, total = _pending(db_url, self.conn)
            progress = (len(self.state.events), len(self.state.request_log), received, outbox, total)
            now = time.monotonic()
            if progress != last:
                last, since = progress, now
            left = (f"{received} deliveries still `received`, {outbox} outbox rows pending/sending"
                    + ("" if delivered else ", simulator webhooks undelivered"))
            if delivered and not received and not outbox:
                if now - since >= 0.3:  # a task finishing now may still fire one more webhook
                    return None
            elif now - since > stall:
                return f"stalled: nothing moved for {stall:.0f} s with {left}"
            if now > deadline:
                return f"not quiescent within {timeout:.0f} s: {left}"
            time.sleep(0.05)


def _pending(db_url: str, conn: str) -> tuple[int, int, int]:
    """(deliveries `received`, outbox rows pending or sending, deliveries in all)."""
    with psycopg.connect(db_url) as c:
        received, total = c.execute(
            "select count(*) filter (where d.status = 'received'), count(*) from deliveries d "
            "join connections c on c.id = d.connection_id where c.name = %s", (conn,)).fetchone()
        outbox = c.execute(
            "select count(*) from outbox o join connections c on c.id = o.connection_id "
            "where c.name = %s and o.state in ('pending', 'sending')", (conn,)).fetchone()[0]
    return received, outbox, total


# -- the baseline ----------------------------------------------------------------------------

def naive_replay(sim_url: str, repo: str, issue_count: int, edits: list[Edit], tables) -> float:
    """The same helpdesk edits, applied the naive way: for every field change, GET the issue,
    then PUT that one field. Against a mirror repository (no hooks: no webhooks fired).
    Returns the wall time."""
    base = f"/repositories/{repo}"
    with httpx2.Client(base_url=f"{sim_url}/2.0", auth=DRIVER, timeout=15) as setup:
        setup.post(base, json={"scm": "git", "has_issues": True}).raise_for_status()
        ids = [setup.post(f"{base}/issues", json={"title": f"Issue {i + 1}", "kind": "bug",
                                                  "priority": "major"}).json()["id"]
               for i in range(issue_count)]
    with httpx2.Client(base_url=f"{sim_url}/2.0", auth=NAIVE, timeout=15) as client:
        def call(method: str, path: str, **kwargs) -> dict:
            r = client.request(method, path, **kwargs)
            if r.status_code >= 300:
                raise RuntimeError(f"naive {method} {path}: {r.status_code} {r.text[:300]}")
            return r.json() if r.content else {}

        started = time.perf_counter()
        for edit in edits:
            if edit.side != "helpdesk":
                continue
            issue_id = ids[edit.issue_slot]
            for name, value in edit.values.items():
                call("GET", f"{base}/issues/{issue_id}")  # "is it still what I think it is?"
                bb_value = value if name == "title" else tables.to_bitbucket(name, value)
                call("PUT", f"{base}/issues/{issue_id}", json={BB_KEY[name]: bb_value})
        return time.perf_counter() - started


# -- reporting -------------------------------------------------------------------------------

def _pct(values: list[float], q: float) -> float:
    return values[int(q * (len(values) - 1))] if values else float("nan")


def _db_facts(db_url: str, conn: str) -> dict:
    with psycopg.connect(db_url) as c:
        def rows(sql: str) -> list[tuple]:
            return c.execute(sql, (conn,)).fetchall()
        join = "join connections c on c.id = x.connection_id where c.name = %s"
        return {
            "deliveries": rows(f"select x.event_key, x.status, count(*) from deliveries x {join} "
                               "group by 1, 2 order by 1, 2"),
            "ledger": rows(f"select x.direction, x.outcome, count(*) from ledger x {join} "
                           "group by 1, 2 order by 1, 2"),
            # One reverse write stamps all its fields with the same Bitbucket time.
            "reverse_batches": rows(
                f"select count(distinct (x.link_id, x.bitbucket_at)) from ledger x {join} "
                "and x.direction = 'reverse' and x.outcome = 'applied' "
                "and coalesce(x.field, '') <> 'comment'")[0][0],
            "outbox": rows(f"select x.kind, x.state, count(*) from outbox x {join} "
                           "group by 1, 2 order by 1, 2"),
            "metered": c.execute("select coalesce(sum(count), 0) from api_budget").fetchone()[0],
            "open_conflicts": rows(f"select count(*) from conflicts x {join} and x.state = 'open'")[0][0],
            "stuck": rows(f"select x.id, l.bitbucket_issue_id, x.fields, x.state, x.attempts "
                          f"from outbox x join links l on l.id = x.link_id {join} "
                          "and x.state in ('pending', 'sending') order by x.id"),
            # Forward conflicts Bitbucket won after our write had replaced its edit: the value
            # goes back to Bitbucket through a new outbox row.
            "restored": rows(f"select count(*) from ledger x {join} and x.direction = 'forward' "
                             "and x.outcome = 'conflict' and x.winner = 'source'")[0][0],
        }


def _converged(bench: Bench) -> tuple[int, list[str], dict[int, dict]]:
    """Issues whose ticket agrees with them on every synced field (promise 7); and the final
    tickets, by issue id."""
    ok, bad, finals = 0, [], {}
    for issue_id, ticket_id in zip(bench.issue_ids, bench.ticket_ids):
        remote, ticket = bench.remote(issue_id), bench.web.get(f"/api/tickets/{ticket_id}").json()
        finals[issue_id] = ticket
        diffs = []
        for name in HELPDESK_FIELDS:
            b = remote[BB_KEY[name]]
            same = b in accepted_values(bench.tables, name, ticket[name])  # lossy maps agree too
            if not same:
                diffs.append(f"{name}: Bitbucket {b!r} / helpdesk {ticket[name]!r}")
        if diffs:
            bad.append(f"#{issue_id}: " + "; ".join(diffs))
        else:
            ok += 1
    return ok, bad, finals


def _deadlocks(log_dir: Path) -> dict[str, int]:
    """PostgreSQL deadlocks seen by each process kind, from its log (distinct DETAIL lines:
    a traceback prints each one twice, once per chained exception)."""
    found: dict[str, set[str]] = {}
    for path in sorted(log_dir.glob("*.log")):
        kind = path.stem.split("-")[0]
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("DETAIL:  Process") and "waits for" in line:
                found.setdefault(kind, set()).add(line)
    return {kind: len(lines) for kind, lines in found.items()}


def _code_version() -> str:
    """The commit measured, and whether the working tree differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10, check=True).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    changed = [line for line in dirty if line.strip() and not line.endswith("bench/api_economy.py")]
    return head + (f" + {len(changed)} uncommitted file(s)" if changed else "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--edits", type=int, default=40, help="helpdesk edits, and as many Bitbucket edits")
    ap.add_argument("--issues", type=int, default=None, help="issues (default max(5, edits/4))")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between two edits")
    ap.add_argument("--timeout", type=float, default=120, help="seconds to wait for quiescence")
    ap.add_argument("--keep-db", action="store_true", help="keep the database (to inspect the ledger)")
    args = ap.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the simulator's per-request lines
    if args.edits < 1:
        ap.error("--edits must be at least 1")
    n = args.edits
    k = args.issues or max(5, n // 4)
    version = _code_version()
    rng = random.Random(args.seed)
    tables = mappings.load()
    edits = plan(rng, n, k)

    db_name = f"bbsync_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db_name}"')
    db_url = PG_URL.rpartition("/")[0] + "/" + db_name
    queue = f"bbsync-bench-{uuid.uuid4().hex[:6]}"
    tmp = ROOT / "var" / "bench-api-economy"
    tmp.mkdir(parents=True, exist_ok=True)
    for old_log in tmp.glob("*.log"):  # this run's logs only (the report reads them)
        old_log.unlink()
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=REDIS_URL, BBSYNC_QUEUE=queue,
               BBSYNC_VAR_DIR=str(tmp), BBSYNC_SECRET_KEYS=Fernet.generate_key().decode())
    env.pop("BROKER_URL", None)
    stack = Stack(env=env, log_dir=tmp)
    r = redis.Redis.from_url(REDIS_URL)
    bench = None
    try:
        with serve_simulator() as (state, sim_url, recorder):
            conn = "bench"
            repo = f"bench/app-{uuid.uuid4().hex[:8]}"
            secret = "bench-" + uuid.uuid4().hex
            stack.run("db", "upgrade")
            stack.run("connection", "add", conn, "--repo", repo, "--webhook-secret", secret,
                      "--api-url", f"{sim_url}/2.0", "--api-token", f"{PRODUCT[0]}:{PRODUCT[1]}")
            token = stack.run("token", "create", "bench", "--admin").stdout.strip().splitlines()[-1]
            stack.start_worker()
            web_url = stack.start_web()

            bench = Bench(state, sim_url, web_url, conn, repo, tables, args.interval)
            bench.web.headers["Authorization"] = f"Bearer {token}"
            t0 = time.perf_counter()
            bench.setup(k, secret, args.timeout)
            unsettled = bench.settle(db_url, args.timeout)
            if unsettled:
                raise RuntimeError(f"setup did not settle: {unsettled} (logs: var/{tmp.name}/)")
            setup_mark = len(recorder.snapshot())
            t1 = time.perf_counter()
            bench.run(edits)
            t2 = time.perf_counter()
            unsettled = bench.settle(db_url, args.timeout)
            t3 = time.perf_counter()
            bench.watcher.stop()
            product_end = len(recorder.snapshot())

            naive_repo = f"bench/naive-{uuid.uuid4().hex[:8]}"
            naive_seconds = naive_replay(sim_url, naive_repo, k, edits, tables)

            calls = recorder.snapshot()
            logged = list(state.request_log)
            facts = _db_facts(db_url, conn)
            converged, diverged, finals = _converged(bench)
            repo_events = [e for e in state.events if e.repository == repo]

        report(args, n, k, edits, bench, calls, logged, setup_mark, product_end, facts,
               converged, diverged, finals, repo_events, naive_seconds, (t1 - t0, t2 - t1, t3 - t2),
               _deadlocks(tmp), unsettled, version)
        return 0
    finally:
        if bench is not None:
            bench.watcher.stop()
            bench.close()
        stack.close()
        if args.keep_db:
            print(f"  database kept: {db_url}; queue kept: {queue}")
        else:
            with psycopg.connect(PG_URL, autocommit=True) as admin:
                admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
            r.delete(queue)


def report(args, n, k, edits, bench, calls, logged, setup_mark, product_end, facts, converged,
           diverged, finals, repo_events, naive_seconds, times, deadlocks, unsettled,
           version) -> None:
    who = Counter(c.who for c in calls)
    product = [c for c in calls if c.who == PRODUCT[0]]
    naive = [c for c in calls if c.who == NAIVE[0]]
    p_reads = [c for c in product if c.method == "GET"]
    p_writes = [c for c in product if c.method != "GET"]
    p_changes = [c for c in p_writes if c.method == "POST" and c.path.endswith("/changes")]
    p_other_writes = [c for c in p_writes if c not in p_changes]
    n_reads = sum(1 for c in naive if c.method == "GET")
    n_writes = len(naive) - n_reads

    helpdesk = [e for e in edits if e.side == "helpdesk" and e.values]
    bitbucket = [e for e in edits if e.side == "bitbucket"]
    field_changes = sum(len(e.values) for e in helpdesk)
    fields_per_write = [len((c.body or {}).get("changes") or {}) for c in p_changes]

    deliveries = facts["deliveries"]
    forward = sum(cnt for key, status, cnt in deliveries
                  if key.startswith("issue:") and status in ("processed", "failed"))
    by_actor = Counter((e.payload.get("actor") or {}).get("display_name") for e in repo_events)
    ledger = {(d, o): cnt for d, o, cnt in facts["ledger"]}
    batches = facts["reverse_batches"]

    exps = bench.watcher.all
    timed = sorted(max(0.0, e.seen_at - e.returned_at) for e in exps
                   if e.seen_at is not None and e.returned_at is not None)
    early = sum(1 for e in exps if e.seen_at is not None and e.returned_at is not None
                and e.seen_at < e.returned_at)
    superseded = sum(1 for e in exps if e.superseded)
    unseen = [e for e in exps if e.seen_at is None and not e.superseded]

    # Cross-checks: the recorder against the simulator's own log, and against the budget meter.
    same_log = Counter((c.method, c.path, c.status) for c in calls) == Counter(
        (x.method, x.path, x.status) for x in logged)
    own = sum(1 for c in calls if c.who in (DRIVER[0], NAIVE[0]))
    by_subtraction = len(logged) - own

    setup_s, edits_s, settle_s = times
    print(f"api economy benchmark: {len(helpdesk)} helpdesk edits ({field_changes} field changes) "
          f"+ {len(bitbucket)} Bitbucket edits, interleaved on {k} issues "
          f"(seed {args.seed}, {args.interval * 1000:.0f} ms apart); code {version}")
    print(f"  setup {setup_s:.1f} s, edits {edits_s:.1f} s, "
          + (f"gave up waiting for quiescence after {settle_s:.1f} s (see ODD)" if unsettled else
             f"quiescent {settle_s:.1f} s after the last edit"))
    print(f"  counting: Basic username of every /2.0 call, recorded by a WSGI wrapper around the "
          f"simulator app; calls by credential: "
          + ", ".join(f"{name.split('@')[0]} {cnt}" for name, cnt in sorted(who.items())))
    print(f"    cross-checks: recorder == state.request_log ({len(logged)} calls): "
          f"{'yes' if same_log else 'NO'}; product by subtraction (log minus this script's own "
          f"calls) {by_subtraction}; product's budget meter {facts['metered']}; "
          f"product calls during setup {sum(1 for c in calls[:setup_mark] if c.who == PRODUCT[0])}, "
          f"after quiescence {sum(1 for c in calls[product_end:] if c.who == PRODUCT[0])}")
    print(f"  forward: {forward} webhook events processed ({by_actor.get(DRIVER[0], 0)} from this "
          f"script's creates and edits, {by_actor.get(PRODUCT[0], 0)} echoes of the product's "
          f"writes; ledger echo {ledger.get(('forward', 'echo'), 0)}, stale "
          f"{ledger.get(('forward', 'stale'), 0)}, conflict {ledger.get(('forward', 'conflict'), 0)})")
    print(f"    product Bitbucket reads: {len(p_reads)}  -> {len(p_reads) / max(1, forward):.3f} "
          f"per forward event (target 0)"
          + (f"  [{', '.join(sorted({c.method + ' ' + c.path for c in p_reads})[:5])}]" if p_reads else ""))
    print(f"  reverse: product Bitbucket writes {len(p_writes)} (POST .../changes {len(p_changes)}, "
          f"other {len(p_other_writes)}), non-2xx {sum(1 for c in p_writes if c.status >= 300)}")
    print(f"    reverse batches applied (ledger: distinct link + write time): {batches}  -> "
          f"{len(p_changes) / max(1, batches):.2f} writes per batch (target 1)")
    if fields_per_write:
        print(f"    fields per write: mean {statistics.mean(fields_per_write):.2f}, max "
              f"{max(fields_per_write)} (an edit changed {field_changes / max(1, len(helpdesk)):.2f} "
              f"on average); writes per helpdesk edit {len(p_writes) / max(1, len(helpdesk)):.2f} "
              f"(below 1 when edits of one issue coalesce)")
    outbox = ", ".join(f"{kind} {st} {cnt}" for kind, st, cnt in facts["outbox"])
    print(f"    outbox: {outbox}; open conflicts {facts['open_conflicts']}")
    product_calls = len(product)
    naive_calls = len(naive)
    per_p = product_calls / max(1, len(helpdesk))
    per_n = naive_calls / max(1, len(helpdesk))
    print(f"  naive baseline (same {len(helpdesk)} edits: GET then PUT per field, no batching): "
          f"{naive_calls} calls ({n_reads} reads + {n_writes} writes) in {naive_seconds:.2f} s")
    print(f"  calls per propagated helpdesk edit: naive {per_n:.2f}, product {per_p:.2f} "
          f"(all its calls, forward included)  ->  ratio naive/product "
          f"{(per_n / per_p) if per_p else float('inf'):.2f}")
    written = sum(fields_per_write)
    per_field_p = product_calls / max(1, written)
    per_field_n = naive_calls / max(1, field_changes)
    print(f"  calls per field value written to Bitbucket: naive {per_field_n:.2f} ({field_changes} "
          f"values), product {per_field_p:.2f} ({written} values: edits of one field coalesce, "
          f"lossy equivalents are not written)  ->  ratio {per_field_n / per_field_p if per_field_p else float('inf'):.2f}")
    print(f"  reverse latency (PATCH returned -> simulator issue shows the values): "
          f"p50 {1000 * _pct(timed, 0.5):.1f} ms, p99 {1000 * _pct(timed, 0.99):.1f} ms, "
          f"max {1000 * (timed[-1] if timed else float('nan')):.1f} ms over {len(timed)} edits; "
          f"{superseded} superseded before seen, {len(unseen)} never seen"
          + (f", {early} seen before the PATCH returned (counted as 0)" if early else ""))
    print(f"  convergence: {converged}/{k} issues agree with their tickets on status, priority, "
          f"type, title (lossy maps count as agreeing)")

    odd = []
    if unsettled:
        odd.append(f"quiescence not reached: {unsettled}")
        for row_id, issue, fields, st, attempts in facts["stuck"][:10]:
            odd.append(f"  outbox row {row_id} (issue #{issue}, fields {fields}) still {st}, "
                       f"{attempts} attempt(s)")
        if facts["stuck"] and facts["restored"]:
            odd.append(f"  forward conflicts that Bitbucket won (its value goes back through a new "
                       f"outbox row): {facts['restored']}")
    if bench.patch_errors:
        statuses = Counter(status for _, _, status in bench.patch_errors)
        odd.append(f"PATCH /api/tickets answered non-200 {len(bench.patch_errors)} time(s) "
                   f"({', '.join(f'{st} x{cnt}' for st, cnt in sorted(statuses.items()))}); each "
                   f"sent again, at most {PATCH_ATTEMPTS} attempts")
    if deadlocks:
        odd.append("PostgreSQL deadlocks in the process logs: "
                   + ", ".join(f"{kind} {cnt}" for kind, cnt in sorted(deadlocks.items())))
    for line in diverged[:10]:
        odd.append(f"diverged {line}")
    for e in unseen[:10]:
        ticket = finals.get(e.issue, {})
        kept = all(ticket.get(name) == value for name, value in e.values.items())
        odd.append(f"helpdesk edit {e.edit} on #{e.issue} {e.values} never showed on Bitbucket: "
                   + ("the ticket still holds it (lost on the way)" if kept else
                      "the ticket no longer holds it (a later forward decision replaced it)"))
    if len(p_reads) or (batches and len(p_changes) != batches) or p_other_writes:
        odd.append("the product's call pattern is off target (see above)")
    if odd:
        print("  ODD:")
        for line in odd:
            print(f"    {line}")


if __name__ == "__main__":
    sys.exit(main())
