"""End-to-end pipeline: webhook -> ticket throughput against a floor, latency, and reconciliation cost.

    .venv/bin/python bench/pipeline.py [--floor-events 1500] [--floor-rounds 2] [--events 400]
                                       [--senders 8] [--rate 50] [--seconds 20]
                                       [--issues 10000] [--changed 100] [--skip 0,1,2,3]

Needs PostgreSQL and Redis (TEST_POSTGRES_URL / TEST_REDIS_URL, defaults on 127.0.0.1). The web
app (gunicorn) and celery workers run as real processes on a fresh database and a unique
queue. A delivery's end-to-end time is its `processed_at` (PostgreSQL) minus the moment this
script sent its POST (wall clock, same machine). Webhooks are signed and sent over HTTP by
keep-alive clients, one per sender thread (bench/webhook_load.py).

0. Throughput against a floor (bench/floor_part.py): a plain durable pipeline as a tutorial
   writes it (bench/floor.py: HMAC, INSERT, one Celery task per delivery; the task parses, writes
   a ledger row and marks the delivery processed in one transaction), on a database and queue of
   its own. Both run from the Procfile's command lines (gunicorn with config/gunicorn.conf.py;
   `celery -A <app> worker --loglevel=INFO --concurrency=4`, prefork), and are measured
   alternately, --floor-rounds times, with --floor-events distinct issue:created events from
   --senders senders, first send -> last processed. Reports both pipelines' events/s and the ratio
   bbsync/floor (median of rounds), and per event: machine CPU, the celery worker's CPU, commits
   (pg_stat_database) and WAL writes and flushes (pg_stat_wal, cluster-wide). Then each at a
   paced 50/s, every event a message of its own: celery CPU per event against its own burst's
   (the floor's ratio is the baseline for bbsync's), p50 and p99.
1. Sustained throughput with ONE worker process (--pool=solo), then with TWO (the baseline is
   one): a burst of --events issue:created events for distinct issues from --senders threads;
   events/s from the first send to the last processed_at; CPU per event of the machine and of
   the celery workers.
2. p50/p99 end-to-end latency at a paced offered load (--rate events/s for --seconds) with
   two workers, and the workers' CPU per event at that rate (against part 1's 2-worker burst).
3. Reconciliation after --changed of --issues issues changed (their webhooks lost), against a
   full scan (listing every issue with the product's client) in the same run: beat's 5-minute
   issue pass, then its hourly comment pass (which lists comments per issue touched). The Bitbucket simulator runs in
   this process; the import (backfill) and reconciliation run in this process too.

With --embedded, parts 1 and 2 run on the embedded default instead (SQLite and the file broker
under var/bench-pipeline/embedded, no server): the figures to set beside PostgreSQL and Redis.

A part that cannot be measured prints "not measured: <reason>" instead of stopping the run.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from bench import floor_part  # noqa: E402
from bench.webhook_load import WEBHOOK_REPO, Sender, burst, drop_database, paced  # noqa: E402
from devstack.stack import Stack  # noqa: E402

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
SECRET = "bench-secret-" + uuid.uuid4().hex[:8]
RECON_USER = ("bench@acme.example", "tok")


# -- reconciliation --------------------------------------------------------------------------

def reconcile_part(stack: Stack, db_url: str, n_issues: int, changed: int, timeout: float) -> dict:
    """Simulator in-process; import n_issues via backfill, change `changed`, then time the
    product's reconciliation and a full scan with the product's client."""
    from config.settings import get_settings
    get_settings.cache_clear()
    from tests.integration.simulator_server import serve_simulator
    from worker.sync.backfill import backfill
    from worker.sync.clients import client_for
    from worker.sync.reconcile import reconcile_connection

    with serve_simulator() as (state, sim_url):
        ws, slug = "bench", f"recon-{uuid.uuid4().hex[:8]}"
        repo = f"{ws}/{slug}"
        state.create_repository(ws, slug, has_issues=True)
        actor = state.principal_for_basic("bench-driver@acme.example")
        t = time.perf_counter()
        for i in range(n_issues):
            state.create_issue(ws, slug, {"title": f"recon issue {i}"}, actor)
        create_s = time.perf_counter() - t
        # Spread the issues over the past (one a minute, the newest a minute ago): created in
        # one burst, they would all fall in reconciliation's overlap window behind its watermark.
        now = datetime.now(timezone.utc)
        with state.lock:
            for item in state._repos[repo].issues.values():
                item.created_on = item.updated_on = now - timedelta(minutes=n_issues + 1 - item.id)
        stack.run("connection", "add", "recon", "--repo", repo, "--webhook-secret", SECRET,
                  "--api-url", f"{sim_url}/2.0", "--api-token", f"{RECON_USER[0]}:{RECON_USER[1]}")
        with psycopg.connect(db_url) as c:
            conn_id = c.execute("select id from connections where name = 'recon'").fetchone()[0]

        t = time.perf_counter()
        # "all" lists nothing here (no issue was touched after its creation) and, like a
        # finished comment pass, leaves the comment watermark at the newest issue.
        bf = backfill(conn_id, comments="all")
        backfill_s = time.perf_counter() - t
        if time.perf_counter() - t > timeout:
            return {"error": "backfill took longer than the timeout"}

        time.sleep(0.05)
        step = max(1, n_issues // max(1, changed))
        changed_ids = [1 + k * step for k in range(min(changed, n_issues))]
        for i in changed_ids:
            state.update_issue(ws, slug, i, {"title": f"recon issue {i} (changed)"}, actor)

        mark = len(state.request_log)
        t = time.perf_counter()
        rep = reconcile_connection(conn_id)  # beat's 5-minute pass: issues only
        rec_s = time.perf_counter() - t
        rec_calls = [x for x in state.request_log[mark:]]

        mark = len(state.request_log)
        t = time.perf_counter()
        com = reconcile_connection(conn_id, comments="changed")  # beat's hourly comment pass
        com_s = time.perf_counter() - t
        com_calls = [x for x in state.request_log[mark:]]

        client = client_for(conn_id)
        mark = len(state.request_log)
        t = time.perf_counter()
        listed = sum(1 for _ in client.iter_issues(repo, pagelen=100))
        full_s = time.perf_counter() - t
        full_calls = [x for x in state.request_log[mark:]]
        state.wait_for_deliveries(2)
    return {"issues": n_issues, "changed": len(changed_ids), "create_s": create_s,
            "backfill_s": backfill_s, "backfill_calls": bf.api_calls, "backfill_seen": bf.issues_seen,
            "rec_s": rec_s, "rec_calls": len(rec_calls), "rec_reported_calls": rep.api_calls,
            "rec_seen": rep.issues_seen, "rec_outcomes": dict(rep.outcomes), "rec_errors": rep.errors,
            "com_s": com_s, "com_calls": len(com_calls), "com_scans": com.comment_scans,
            "com_seen": com.issues_seen,
            "full_s": full_s, "full_calls": len(full_calls), "full_listed": listed}


# -- main --------------------------------------------------------------------------------------

def report_throughput(one: dict, two: dict) -> list[str]:
    out = ["1. sustained throughput webhook -> ticket (burst, first send -> last processed_at):"]
    for name, x in (("1 worker ", one), ("2 workers", two)):
        if "error" in x:
            out.append(f"   {name}: not measured: {x['error']}")
            continue
        out.append(f"   {name}: {x['eps']:7.1f} events/s  ({x['processed']}/{x['accepted']} "
                   f"processed in {x['seconds']:.2f} s, send phase {x['send_seconds']:.2f} s, "
                   f"p50 {1000 * x['p50']:.0f} ms, p99 {1000 * x['p99']:.0f} ms, "
                   f"statuses {x['statuses']}, send errors {x['errors']})")
        out.append(f"              machine CPU busy {100 * x['busy']:.0f}% of {x['cores']} cores, "
                   f"{x['cpu_ms']:.1f} ms of CPU per event (all processes): a ceiling of "
                   f"~{1000 * x['cores'] / x['cpu_ms']:.0f} events/s on this machine; "
                   f"celery workers {x['celery_ms']:.2f} ms of CPU per event")
    if "error" not in one and "error" not in two and one["eps"]:
        out.append(f"   ratio 2-workers/1-worker: {two['eps'] / one['eps']:.2f}")
    if "error" not in one and one["processed"] < one["accepted"] or \
            "error" not in two and two["processed"] < two["accepted"]:
        out.append("   NOTE: not every accepted event was processed within the timeout")
    return out


def report_latency(lat: dict, rate: float, two: dict | None) -> list[str]:
    if "error" in lat:
        return [f"2. latency: not measured: {lat['error']}"]
    out = [f"2. end-to-end latency at {rate:g} events/s offered (two workers, "
           f"achieved send rate {lat['achieved_rate']:.1f}/s): p50 {1000 * lat['p50']:.1f} ms, "
           f"p99 {1000 * lat['p99']:.1f} ms, max {1000 * lat['max']:.1f} ms "
           f"({lat['processed']}/{lat['accepted']} processed of {lat['offered']} offered, "
           f"send errors {lat['errors']})"]
    line = f"   celery workers: {lat['celery_ms']:.2f} ms of CPU per event at this rate"
    if two and "error" not in two and two["celery_ms"]:
        line += (f", {lat['celery_ms'] / two['celery_ms']:.2f}x the 2-worker burst's "
                 f"{two['celery_ms']:.2f} ms (part 1)")
    return out + [line]


def report_reconcile(x: dict) -> list[str]:
    out: list[str] = []
    if "error" in x:
        out.append(f"3. reconciliation: not measured: {x['error']}")
    else:
        out.append(f"3. reconciliation, {x['issues']} issues of which {x['changed']} changed "
                   f"(setup: created in-process {x['create_s']:.1f} s, dated one a minute into the past, backfill "
                   f"{x['backfill_s']:.1f} s, {x['backfill_calls']} calls, {x['backfill_seen']} seen)")
        out.append(f"   issue pass (every 5 min): {x['rec_calls']} API calls (its report: "
                   f"{x['rec_reported_calls']}), {x['rec_s'] * 1000:.0f} ms, {x['rec_seen']} issues "
                   f"seen, outcomes {x['rec_outcomes']}" + (f", errors {x['rec_errors']}" if x['rec_errors'] else ""))
        out.append(f"   comment pass (hourly): {x['com_calls']} API calls, {x['com_s'] * 1000:.0f} ms, "
                   f"{x['com_seen']} issues seen, comments of {x['com_scans']} listed")
        out.append(f"   full scan (iter_issues pagelen=100): {x['full_calls']} API calls, "
                   f"{x['full_s'] * 1000:.0f} ms, {x['full_listed']} issues listed")
        out.append(f"   ratio full/reconcile: calls {x['full_calls'] / max(1, x['rec_calls']):.1f}x, "
                   f"time {x['full_s'] / x['rec_s']:.1f}x" if x["rec_s"] else "   ratio: n/a")
    return out


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--floor-events", type=int, default=1500, help="events per round of part 0")
    ap.add_argument("--floor-rounds", type=int, default=2, help="rounds of part 0 (each: floor, then bbsync)")
    ap.add_argument("--events", type=int, default=400, help="events per throughput burst")
    ap.add_argument("--senders", type=int, default=8, help="sender threads")
    ap.add_argument("--rate", type=float, default=50, help="offered load for the latency part")
    ap.add_argument("--seconds", type=float, default=20, help="duration of the latency part")
    ap.add_argument("--issues", type=int, default=10000, help="issues for the reconciliation part")
    ap.add_argument("--changed", type=int, default=100, help="of which changed before reconciling")
    ap.add_argument("--timeout", type=float, default=300, help="max seconds to wait per part")
    ap.add_argument("--skip", default="", help="comma-separated parts to skip (0,1,2,3)")
    ap.add_argument("--embedded", action="store_true",
                    help="parts 1 and 2 on the embedded default (SQLite and the file broker, no "
                         "server) instead of PostgreSQL and Redis; parts 0 and 3 need those and are skipped")
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    skip = set(args.skip.split(","))

    tmp = ROOT / "var" / "bench-pipeline"
    tmp.mkdir(parents=True, exist_ok=True)
    for old in tmp.glob("*.log"):
        old.unlink()
    queue = f"bbsync-bench-{uuid.uuid4().hex[:6]}"
    db_name = f"bbsync_bench_{uuid.uuid4().hex[:8]}"
    if args.embedded:
        skip |= {"0", "3"}
        shutil.rmtree(tmp / "embedded", ignore_errors=True)
        db_url = f"sqlite:///{tmp / 'embedded' / 'bbsync.db'}"
        os.environ.pop("REDIS_URL", None)
        os.environ.update(DATABASE_URL=db_url, BBSYNC_VAR_DIR=str(tmp / "embedded"))
    else:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{db_name}"')
        db_url = PG_URL.rpartition("/")[0] + "/" + db_name
        # This process runs backfill/reconcile itself (part 3): same settings as the stack.
        os.environ.update(DATABASE_URL=db_url, REDIS_URL=REDIS_URL, BBSYNC_VAR_DIR=str(tmp))
    os.environ.update(BBSYNC_QUEUE=queue, BBSYNC_SECRET_KEYS=Fernet.generate_key().decode())
    os.environ.pop("BROKER_URL", None)
    env = dict(os.environ)
    stack = Stack(env=env, log_dir=tmp)
    r = redis.Redis.from_url(REDIS_URL)
    out: list[str] = [("embedded default (SQLite, file broker): " if args.embedded else "") +
                      f"pipeline benchmark: floor vs bbsync {args.floor_rounds} x {args.floor_events} events, "
                      f"events {args.events} ({args.senders} senders), "
                      f"paced {args.rate:g}/s x {args.seconds:g} s, reconcile {args.issues} issues / "
                      f"{args.changed} changed"]
    try:
        stack.run("db", "upgrade")
        stack.run("connection", "add", "bench", "--repo", WEBHOOK_REPO, "--webhook-secret", SECRET)
        web = stack.start_web()  # what production runs (config/gunicorn.conf.py)
        sender = Sender(f"{web}/webhooks/bitbucket/bench", SECRET)

        if "0" not in skip:
            out += floor_part.run(stack, sender, db_url, pg_url=PG_URL, redis_url=REDIS_URL, log_dir=tmp,
                                  events=args.floor_events, rounds=args.floor_rounds,
                                  senders=args.senders, timeout=args.timeout)
        one = two = None
        workers: list[int] = []
        if "1" not in skip or "2" not in skip:
            workers.append(stack.start_worker("worker-1").pid)  # its own session: pid = process group
            burst(db_url, sender, 20, args.senders, 60)  # warm-up: imports, pools, caches
        if "1" not in skip:
            one = burst(db_url, sender, args.events, args.senders, args.timeout, groups=workers)
        if "1" not in skip or "2" not in skip:
            workers.append(stack.start_worker("worker-2").pid)
            burst(db_url, sender, 20, args.senders, 60)
        if "1" not in skip:
            two = burst(db_url, sender, args.events, args.senders, args.timeout, groups=workers)
            out += report_throughput(one, two)
        if "2" not in skip:
            lat = paced(db_url, sender, args.rate, args.seconds, args.senders, args.timeout, workers)
            out += report_latency(lat, args.rate, two)
        for name in list(stack.procs):  # part 3 runs in this process: stop web and workers
            stack.stop(name)

        if "3" not in skip:
            try:
                x = reconcile_part(stack, db_url, args.issues, args.changed, args.timeout * 4)
            except Exception as exc:  # report, do not crash the run
                x = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            out += report_reconcile(x)
        print("\n".join(out))
        return 0
    finally:
        stack.close()
        if not args.embedded:
            r.delete(queue)
        drop_database(PG_URL, None if args.embedded else db_name)


if __name__ == "__main__":
    sys.exit(main())
