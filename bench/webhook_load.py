"""Signed webhooks sent over HTTP, and what became of them: shared by bench/pipeline.py's parts.

A Sender posts issue:created events for distinct issues from keep-alive clients (httpx2, one per
thread) and records when it sent each accepted delivery; wait_processed polls the receiving
pipeline's table until every delivery has a processed_at; burst does both and measures.
"""
from __future__ import annotations

import copy
import json
import os
import sqlite3
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import httpx2
import psycopg

from bench.machine import group_cpu, machine_cpu
from webhooks.signatures import sign

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = json.loads((ROOT / "tests" / "fixtures" / "webhooks" /
                       "kanboard__bitbucket_issue_opened.json").read_text())
WEBHOOK_REPO = TEMPLATE["repository"]["full_name"]


class Sender:
    """Signed issue:created webhooks for distinct issues; records send times by delivery id
    (the `delivery` of each 202 answer)."""

    def __init__(self, url: str, secret: str, first_issue: int = 1000) -> None:
        self.url = url
        self.secret = secret
        self.next_issue = first_issue
        self.lock = threading.Lock()

    def _body(self, issue_id: int) -> bytes:
        d = copy.deepcopy(TEMPLATE)
        now = datetime.now(timezone.utc).isoformat()
        d["issue"]["id"] = issue_id
        d["issue"]["title"] = f"bench issue {issue_id}"
        d["issue"]["created_on"] = now
        d["issue"]["updated_on"] = now
        return json.dumps(d).encode()

    def take_ids(self, n: int) -> list[int]:
        with self.lock:
            ids = list(range(self.next_issue, self.next_issue + n))
            self.next_issue += n
            return ids

    def send(self, n: int, threads: int, rate: float | None = None, deadline_s: float = 300) -> dict:
        """Send n events (paced at `rate`/s if given, else as fast as `threads` allow).
        Returns {delivery_id: send wall time}, plus failures."""
        ids = self.take_ids(n)
        bodies = [self._body(i) for i in ids]
        sent: dict[str, float] = {}
        errors: list[str] = []
        idx = iter(range(n))
        lock = threading.Lock()
        start = time.monotonic()
        stop_at = start + deadline_s

        def loop() -> None:
            with httpx2.Client(timeout=30) as client:
                while time.monotonic() < stop_at:
                    with lock:
                        k = next(idx, None)
                    if k is None:
                        return
                    if rate:
                        delay = start + k / rate - time.monotonic()
                        if delay > 0:
                            time.sleep(delay)
                    body = bodies[k]
                    headers = {"X-Event-Key": "issue:created", "X-Request-UUID": str(uuid.uuid4()),
                               "X-Hub-Signature": sign(self.secret, body), "Content-Type": "application/json"}
                    t = time.time()
                    try:
                        resp = client.post(self.url, content=body, headers=headers)
                    except httpx2.TransportError as exc:
                        with lock:
                            errors.append(type(exc).__name__)
                        continue
                    if resp.status_code != 202:
                        with lock:
                            errors.append(str(resp.status_code))
                        continue
                    with lock:
                        sent[resp.json()["delivery"]] = t

        ts = [threading.Thread(target=loop, daemon=True) for _ in range(threads)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(deadline_s + 60)
        return {"sent": sent, "errors": errors, "send_seconds": time.monotonic() - start}


def wait_processed(db_url: str, ids: list[str], timeout: float, table: str = "deliveries",
                   stats: dict | None = None) -> dict[str, tuple[str, float | None]]:
    """Poll `table` until every delivery has processed_at (or timeout); {id: (status, processed_ts)}.
    Each poll is one transaction (autocommit) in that database: their number goes in
    stats["polls"], for a caller who counts the pipeline's commits. A sqlite:/// URL (the
    embedded default) is read with the standard library's driver."""
    deadline = time.monotonic() + timeout
    rows: dict[str, tuple[str, float | None]] = {}
    polls = 0
    read = _sqlite_reader(db_url, table) if db_url.startswith("sqlite") else _pg_reader(db_url, table)
    try:
        with read as fetch:
            while True:
                polls += 1
                rows = fetch(ids)
                done = sum(1 for st, p in rows.values() if p is not None)
                if done >= len(ids) or time.monotonic() > deadline:
                    return rows
                time.sleep(0.1)
    finally:
        if stats is not None:
            stats["polls"] = polls


@contextmanager
def _pg_reader(db_url: str, table: str):
    with psycopg.connect(db_url, autocommit=True) as c:
        yield lambda ids: {i: (st, p.timestamp() if p else None) for i, st, p in c.execute(
            f"select id, status, processed_at from {table} where id = any(%s)", (ids,))}


@contextmanager
def _sqlite_reader(db_url: str, table: str):
    c = sqlite3.connect(db_url.split("///", 1)[1], timeout=30)

    def fetch(ids: list[str]) -> dict[str, tuple[str, float | None]]:
        out = {}
        for k in range(0, len(ids), 500):  # SQLite's limit on bound parameters
            chunk = ids[k:k + 500]
            for i, st, p in c.execute(f"select id, status, processed_at from {table} where id in "
                                      f"({','.join('?' * len(chunk))})", chunk):
                # Stored naive, in UTC (worker.db.models.UTCDateTime).
                out[i] = (st, datetime.fromisoformat(p).replace(tzinfo=timezone.utc).timestamp() if p else None)
        return out
    try:
        yield fetch
    finally:
        c.close()


def celery_cpu(groups: list[int]) -> float:
    """CPU seconds used so far by the celery workers (process groups) named."""
    return sum(group_cpu(g) for g in groups)


def burst(db_url: str, sender: Sender, n: int, threads: int, timeout: float,
          table: str = "deliveries", groups: list[int] | None = None) -> dict:
    """n events as fast as `threads` senders go; events/s from the first send to the last
    processed_at. `groups`: the celery workers' process groups, whose CPU is counted."""
    cpu0, ccpu0 = machine_cpu(), celery_cpu(groups or [])
    res = sender.send(n, threads)
    sent = res["sent"]
    if not sent:
        return {"error": f"no event accepted ({res['errors'][:3]})"}
    stats: dict = {}
    rows = wait_processed(db_url, list(sent), timeout, table, stats)
    cpu1, ccpu1 = machine_cpu(), celery_cpu(groups or [])
    done = {i: p for i, (st, p) in rows.items() if p is not None}
    first = min(sent.values())
    last = max(done.values()) if done else float("nan")
    lat = sorted(done[i] - sent[i] for i in done)
    statuses: dict[str, int] = {}
    for st, _ in rows.values():
        statuses[st] = statuses.get(st, 0) + 1
    return {"accepted": len(sent), "errors": len(res["errors"]), "processed": len(done),
            "statuses": statuses, "seconds": last - first,
            "eps": len(done) / (last - first) if done else 0.0,
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "send_seconds": res["send_seconds"],
            # Machine-wide, over the burst and the polling after it: how busy the cores were,
            # and the CPU one event cost across every process (a ceiling: cores / cost).
            "busy": (cpu1[0] - cpu0[0]) / max(1e-9, cpu1[1] - cpu0[1]),
            "cpu_ms": 1000 * (cpu1[0] - cpu0[0]) / max(1, len(done)),
            "celery_ms": 1000 * (ccpu1 - ccpu0) / max(1, len(done)) if groups else None,
            "polls": stats.get("polls", 0), "cores": os.cpu_count() or 1}


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))] if xs else float("nan")


def paced(db_url: str, sender: Sender, rate: float, seconds: float, threads: int, timeout: float,
          groups: list[int], table: str = "deliveries") -> dict:
    """rate*seconds events sent at `rate`/s; latency send -> processed_at, and the CPU per
    event of the celery workers' process groups `groups`."""
    n = int(rate * seconds)
    ccpu0 = celery_cpu(groups)
    res = sender.send(n, threads, rate=rate, deadline_s=seconds + 60)
    sent = res["sent"]
    if not sent:
        return {"error": f"no event accepted ({res['errors'][:3]})"}
    rows = wait_processed(db_url, list(sent), timeout, table)
    ccpu1 = celery_cpu(groups)
    done = {i: p for i, (st, p) in rows.items() if p is not None}
    lat = sorted(done[i] - sent[i] for i in done)
    return {"offered": n, "accepted": len(sent), "errors": len(res["errors"]), "processed": len(done),
            "achieved_rate": len(sent) / res["send_seconds"],
            "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "max": lat[-1] if lat else float("nan"),
            "celery_ms": 1000 * (ccpu1 - ccpu0) / max(1, len(done))}


def drop_database(pg_url: str, db_name: str | None) -> None:
    """Close this process's engine (if it made one), then drop a bench's database (None: it
    ran on SQLite)."""
    try:
        from worker.db.session import get_engine
        get_engine().dispose()
    except Exception:
        pass
    if db_name:
        with psycopg.connect(pg_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
