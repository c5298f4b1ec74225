"""Part 0 of bench/pipeline.py: bbsync's throughput against a floor measured in the same run.

The floor (bench/floor.py) is a plain durable pipeline as a tutorial writes it: HMAC check, one
INSERT committed, one Celery task per delivery; the task reads, parses, writes one ledger row and
marks the delivery processed in one transaction. Both pipelines run from the Procfile's command
lines: gunicorn with config/gunicorn.conf.py, and `celery -A <app> worker --loglevel=INFO
--concurrency=4` (prefork, four children). The floor has a database and a queue of its own.

Both are started and warmed up (--senders x ~6 events each), then measured alternately, floor
first, for `rounds` rounds: `events` distinct signed issue:created webhooks from `senders`
keep-alive senders, events/s from the first send to the last processed_at. Per event:
  - machine CPU (every process, the senders included) and the celery worker's CPU (its process
    group: the main process, its pool's children, and children they reaped);
  - commits and rollbacks in the pipeline's database (pg_stat_database, less the bench's own
    polling queries, one autocommit transaction each; autovacuum's, if it visits, count too);
  - WAL writes and flushes (pg_stat_wal, PostgreSQL 14+; cluster-wide, so anything else
    running on the server counts too).
Then each pipeline once at a paced 50 events/s, where every event is a message of its own: its
celery CPU per event against its own burst's (the floor's ratio a baseline for bbsync's).
PostgreSQL's statistics arrive late: a backend that goes idle reports its counters up to 10 s
(PGSTAT_IDLE_INTERVAL) after its last transaction, and pg_stat_force_next_flush() acts only on
the backend calling it, not the pipeline's. So the counters are read after every pipeline has
been idle for SETTLE_S.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from bench import process_cpu
from bench.floor import create_tables
from bench.webhook_load import ROOT, Sender, burst, paced
from devstack.stack import Stack, _bin

SETTLE_S = 10.5
WARMUP = 50
#: After the rounds, each pipeline at a trickle, where every event is a message of its own: its
#: celery CPU per event against its own burst's, the floor's ratio a baseline for bbsync's.
PACED_RATE, PACED_SECONDS = 50, 12


@dataclass
class Pipeline:
    name: str
    db_name: str
    db_url: str
    table: str
    sender: Sender
    worker: subprocess.Popen
    web: subprocess.Popen


def procfile_worker(stack: Stack, name: str, app: str) -> subprocess.Popen:
    """The Procfile's worker line, for `app`."""
    proc = stack._spawn(name, [_bin("celery"), "-A", app, "worker", "--loglevel=INFO", "--concurrency=4"])
    stack._wait_log(name, "ready.", proc)
    return proc


def pg_counters(pg_url: str, db_name: str) -> dict:
    """Commits and rollbacks of one database, WAL writes and flushes of the cluster (None where
    the server has no pg_stat_wal). Read from another database: the reading commits nothing there."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        commits, rollbacks = c.execute("select xact_commit, xact_rollback from pg_stat_database "
                                       "where datname = %s", (db_name,)).fetchone()
        try:
            wal_write, wal_sync = c.execute("select wal_write, wal_sync from pg_stat_wal").fetchone()
        except psycopg.errors.UndefinedTable:
            wal_write = wal_sync = None
    return {"commits": commits, "rollbacks": rollbacks, "wal_write": wal_write, "wal_sync": wal_sync}


def measure(p: Pipeline, pg_url: str, events: int, senders: int, timeout: float) -> dict:
    """One round of one pipeline; every pipeline must have been idle for SETTLE_S before."""
    before = pg_counters(pg_url, p.db_name)
    backends = process_cpu.backend_pids(pg_url, p.db_name)
    cpu0 = process_cpu.reading(p.web.pid, p.worker.pid, backends)
    x = burst(p.db_url, p.sender, events, senders, timeout, table=p.table, groups=[p.worker.pid])
    backends |= process_cpu.backend_pids(pg_url, p.db_name)
    cpu1 = process_cpu.reading(p.web.pid, p.worker.pid, backends)
    time.sleep(SETTLE_S)  # also the next measurement's idle time
    if "error" in x:
        return x
    after = pg_counters(pg_url, p.db_name)
    n = max(1, x["processed"])
    x["by_process"] = process_cpu.per_event(cpu0, cpu1, x["cpu_ms"], n)
    d = {k: None if after[k] is None else after[k] - before[k] for k in after}
    d["commits"] -= x["polls"]
    x.update({k: None if v is None else v / n for k, v in d.items()})
    return x


def start_floor(pg_url: str, redis_url: str, log_dir: Path) -> tuple[Stack, Pipeline, str]:
    """The floor's database, tables, web and worker; (its stack, the pipeline, its queue)."""
    tag = uuid.uuid4().hex[:8]
    db_name = f"bbsync_floor_{tag}"
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db_name}"')
    db_url = pg_url.rpartition("/")[0] + "/" + db_name
    create_tables(db_url)
    secret, queue = f"floor-secret-{tag}", f"floor-bench-{tag}"
    path = os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x)
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=redis_url, BBSYNC_QUEUE=queue,
               FLOOR_SECRET=secret, PYTHONPATH=path)
    stack = Stack(env=env, log_dir=log_dir)
    web = stack.start_web(app="bench.floor:create_app()", chdir=str(ROOT))
    worker = procfile_worker(stack, "floor-worker", "bench.floor")
    sender = Sender(f"{web}/webhooks/bitbucket/floor", secret)
    return stack, Pipeline("floor", db_name, db_url, "floor_deliveries", sender, worker,
                           web_process(stack, web)), queue


def web_process(stack: Stack, url: str) -> subprocess.Popen:
    """The gunicorn process (its own session: pid = process group) serving `url`."""
    return stack.procs[f"web-{url.rpartition(':')[2]}"]


def drop_floor(stack: Stack | None, pipe: Pipeline | None, queue: str | None, pg_url: str, redis_url: str) -> None:
    if stack is not None:
        stack.close()
    if queue:
        redis.Redis.from_url(redis_url).delete(queue)
    if pipe is not None:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{pipe.db_name}" WITH (FORCE)')


def run(stack: Stack, sender: Sender, db_url: str, *, pg_url: str, redis_url: str, log_dir: Path,
        events: int, rounds: int, senders: int, timeout: float) -> list[str]:
    """`stack` runs bbsync's web (at sender.url), on db_url; its Procfile worker is started and
    stopped here."""
    fstack = floor = queue = None
    try:
        fstack, floor, queue = start_floor(pg_url, redis_url, log_dir)
        ours = Pipeline("bbsync", db_url.rpartition("/")[2], db_url, "deliveries", sender,
                        procfile_worker(stack, "worker-procfile", "worker.queue.celery_app"),
                        web_process(stack, sender.url.rsplit("/webhooks/", 1)[0]))
        for p in (floor, ours):  # imports, pools, caches
            burst(p.db_url, p.sender, WARMUP, senders, 60, table=p.table)
        time.sleep(SETTLE_S)
        results = [(measure(floor, pg_url, events, senders, timeout),
                    measure(ours, pg_url, events, senders, timeout)) for _ in range(rounds)]
        trickle = [paced(p.db_url, p.sender, PACED_RATE, PACED_SECONDS, senders, timeout, [p.worker.pid], p.table)
                   for p in (floor, ours)]
        return report(results, events, senders) + report_paced(results, trickle)
    except Exception as exc:  # report, do not crash the run
        return [f"0. floor vs bbsync: not measured: {type(exc).__name__}: {exc}"[:500]]
    finally:
        stack.stop("worker-procfile")
        drop_floor(fstack, floor, queue, pg_url, redis_url)


def _fmt(v: float | None, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def report_one(name: str, x: dict) -> list[str]:
    if "error" in x:
        return [f"     {name:6}: not measured: {x['error']}"]
    return [f"     {name:6}: {x['eps']:7.1f} events/s  ({x['processed']}/{x['accepted']} processed in "
            f"{x['seconds']:.2f} s, send phase {x['send_seconds']:.2f} s, p50 {1000 * x['p50']:.0f} ms, "
            f"p99 {1000 * x['p99']:.0f} ms, statuses {x['statuses']}, send errors {x['errors']})",
            f"             per event: machine CPU {x['cpu_ms']:.2f} ms, celery CPU {x['celery_ms']:.2f} ms, "
            f"commits {_fmt(x['commits'])} (rollbacks {_fmt(x['rollbacks'])}), "
            f"WAL writes {_fmt(x['wal_write'])}, WAL flushes {_fmt(x['wal_sync'])}",
            "             CPU ms per event by process: " + ", ".join(
                f"{k} {v:.2f}" for k, v in x.get("by_process", {}).items())]


def report(results: list[tuple[dict, dict]], events: int, senders: int) -> list[str]:
    out = [f"0. floor vs bbsync: {events} distinct issue:created events per round from {senders} "
           f"keep-alive senders, first send -> last processed_at; both run by the Procfile's lines "
           f"(gunicorn config/gunicorn.conf.py; celery prefork --concurrency=4); WAL counts are "
           f"cluster-wide:"]
    ratios = []
    for k, (floor, ours) in enumerate(results, 1):
        out.append(f"   round {k}:")
        out += report_one("floor", floor) + report_one("bbsync", ours)
        if "error" not in floor and "error" not in ours and floor["eps"]:
            ratios.append(ours["eps"] / floor["eps"])
            out.append(f"     ratio bbsync/floor {ratios[-1]:.2f}")
        if any("error" not in x and x["processed"] < x["accepted"] for x in (floor, ours)):
            out.append("     NOTE: not every accepted event was processed within the timeout")
    if ratios:
        out.append(f"   bbsync/floor events/s: {statistics.median(ratios):.2f} (median of {len(ratios)} "
                   f"rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
    return out


def report_paced(results: list[tuple[dict, dict]], trickle: list[dict]) -> list[str]:
    out = [f"   at a paced {PACED_RATE}/s for {PACED_SECONDS} s (every event a message of its own), the same "
           f"Procfile workers; celery CPU per event against the pipeline's burst (median of rounds):"]
    for k, (name, x) in enumerate(zip(("floor", "bbsync"), trickle)):
        bursts = [r[k]["celery_ms"] for r in results if "error" not in r[k]]
        if "error" in x or not bursts:
            out.append(f"     {name:6}: not measured: {x.get('error', 'no burst')}")
            continue
        b = statistics.median(bursts)
        out.append(f"     {name:6}: {x['celery_ms']:.2f} ms, {x['celery_ms'] / b:.2f}x its burst's {b:.2f} ms; "
                   f"p50 {1000 * x['p50']:.1f} ms, p99 {1000 * x['p99']:.1f} ms "
                   f"({x['processed']}/{x['accepted']} processed)")
    return out
