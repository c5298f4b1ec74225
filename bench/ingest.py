"""Receiver throughput and acknowledgement latency, against a bare Flask endpoint in the same run.

    .venv/bin/python bench/ingest.py [--seconds 10] [--concurrency 16] [--rounds 2]

Needs PostgreSQL and Redis (TEST_POSTGRES_URL / TEST_REDIS_URL, defaults on 127.0.0.1). Both
endpoints run under the same gunicorn settings, the Procfile's worker and thread counts unless
BENCH_GUNICORN="--workers N --threads M" says otherwise; rounds alternate bare/real to share the
machine's drift. Every request carries a distinct X-Request-UUID and a valid signature; at the
end the stored rows and the queued tasks are counted against the acknowledged requests.
"""
from __future__ import annotations

import argparse
import base64
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx2  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from bench.machine import cpu_by_program, machine_cpu, procfile_web  # noqa: E402
from webhooks.signatures import sign  # noqa: E402
from worker.stack import Stack, free_port, wait_http  # noqa: E402

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = (ROOT / "tests" / "fixtures" / "webhooks" / "kanboard__bitbucket_issue_opened.json").read_bytes()
SECRET = "bench-secret"
GUNICORN = os.environ.get("BENCH_GUNICORN", "--workers {} --threads {}".format(*procfile_web())).split()


def _client(url: str, seconds: float, threads: int, out: mp.Queue) -> None:
    """One load process: `threads` keep-alive connections, each sending back to back."""
    import threading
    results: list[tuple[int, float]] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def loop():
        mine = []
        with httpx2.Client(timeout=30) as client:
            while time.monotonic() < stop_at:
                headers = {"X-Event-Key": "issue:created", "X-Request-UUID": str(uuid.uuid4()),
                           "X-Hub-Signature": sign(SECRET, BODY), "Content-Type": "application/json"}
                t0 = time.perf_counter()
                status = client.post(url, content=BODY, headers=headers).status_code
                mine.append((status, time.perf_counter() - t0))
        with lock:
            results.extend(mine)

    ts = [threading.Thread(target=loop) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    out.put(results)


def load(url: str, seconds: float, concurrency: int) -> dict:
    procs_n = min(4, concurrency)
    out: mp.Queue = mp.Queue()
    procs = [mp.Process(target=_client, args=(url, seconds, concurrency // procs_n, out))
             for _ in range(procs_n)]
    cpu0, by0 = machine_cpu(), cpu_by_program()
    for p in procs:
        p.start()
    results = [r for _ in procs for r in out.get()]
    cpu1, by1 = machine_cpu(), cpu_by_program()
    spent = {name: by1[name] - by0.get(name, 0.0) for name in by1}
    per_request = {name: 1000 * t / max(1, len(results)) for name, t in spent.items() if t > 0}
    per_request["(load generator, others)"] = 1000 * (cpu1[0] - cpu0[0]) / max(1, len(results)) - sum(per_request.values())
    for p in procs:
        p.join()
    latencies = sorted(lat for status, lat in results if status == 202)
    return {
        # Machine-wide, load generator included: whether the run was CPU-bound, and what one
        # request cost every process together.
        "busy": (cpu1[0] - cpu0[0]) / max(1e-9, cpu1[1] - cpu0[1]),
        "cpu_ms": 1000 * (cpu1[0] - cpu0[0]) / max(1, len(results)),
        "by_program": dict(sorted(per_request.items(), key=lambda kv: -kv[1])[:5]),
        "requests": len(results), "accepted": len(latencies),
        "errors": sum(1 for status, _ in results if status != 202),
        "rps": len(latencies) / seconds,
        "p50_ms": 1000 * statistics.median(latencies) if latencies else float("nan"),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))] if latencies else float("nan"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    db_name = f"bbsync_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_URL, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{db_name}"')
    db_url = PG_URL.rpartition("/")[0] + "/" + db_name
    queue = f"bbsync-bench-{uuid.uuid4().hex[:6]}"
    tmp = ROOT / "var" / "bench-ingest"
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, DATABASE_URL=db_url, REDIS_URL=REDIS_URL, BBSYNC_QUEUE=queue,
               BBSYNC_VAR_DIR=str(tmp), BBSYNC_SECRET_KEYS=Fernet.generate_key().decode())
    env.pop("BROKER_URL", None)
    stack = Stack(env=env, log_dir=tmp)
    r = redis.Redis.from_url(REDIS_URL)
    try:
        stack.run("db", "upgrade")
        stack.run("connection", "add", "bench", "--repo", "minicoders/test-webhook", "--webhook-secret", SECRET)
        real = stack.start_web(workers=int(GUNICORN[1]), threads=int(GUNICORN[3])) + "/webhooks/bitbucket/bench"
        bare_port = free_port()
        bare = stack._spawn("bare", [str(Path(sys.executable).parent / "gunicorn"), "--bind",
                                     f"127.0.0.1:{bare_port}", *GUNICORN, "--chdir", str(ROOT / "bench"),
                                     "bare_app:app"])
        wait_http(f"http://127.0.0.1:{bare_port}/", proc=bare)
        bare_url = f"http://127.0.0.1:{bare_port}/webhooks/bitbucket/bench"

        load(real, 2, args.concurrency)  # warm-up: connection pools, imports, caches
        load(bare_url, 2, args.concurrency)
        _settle(r, queue)  # the web processes publish from a background thread
        warm = _count_rows(db_url)
        r.delete(queue)

        runs = {"bare": [], "real": []}
        for _ in range(args.rounds):
            runs["bare"].append(load(bare_url, args.seconds, args.concurrency))
            runs["real"].append(load(real, args.seconds, args.concurrency))

        accepted = sum(x["accepted"] for x in runs["real"])
        _settle(r, queue)
        queued, distinct = _queued_deliveries(r, queue)
        rows = _count_rows(db_url) - warm
        print(f"ingest benchmark: {args.rounds} round(s) x {args.seconds:.0f} s, "
              f"{args.concurrency} concurrent connections, gunicorn {' '.join(GUNICORN)}")
        for name in ("bare", "real"):
            for i, x in enumerate(runs[name], 1):
                print(f"  {name:<4} round {i}: {x['rps']:8.1f} req/s  p50 {x['p50_ms']:6.2f} ms  "
                      f"p99 {x['p99_ms']:6.2f} ms  errors {x['errors']}  machine CPU busy "
                      f"{100 * x['busy']:.0f}%, {x['cpu_ms']:.2f} ms per request (all processes)")
                print("        CPU ms per request: " + ", ".join(f"{k} {v:.2f}" for k, v in x["by_program"].items()))
        bare_rps = statistics.mean(x["rps"] for x in runs["bare"])
        real_rps = statistics.mean(x["rps"] for x in runs["real"])
        print(f"  throughput ratio real/bare: {real_rps / bare_rps:.2f}")
        print(f"  real p50 {statistics.mean(x['p50_ms'] for x in runs['real']):.2f} ms, "
              f"p99 {max(x['p99_ms'] for x in runs['real']):.2f} ms (worst round)")
        print(f"  acknowledged {accepted}, rows stored {rows}, tasks queued {queued}: "
              f"lost {max(0, accepted - rows)}, duplicated {max(0, rows - accepted)}, "
              f"queue mismatch {queued - rows} ({distinct} distinct ids in {r.llen(queue)} messages)")
        return 0
    finally:
        stack.close()
        r.delete(queue)
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _settle(r: redis.Redis, queue: str, quiet_seconds: float = 1.0) -> int:
    """Wait until the queue stops growing; returns its length."""
    last, since = -1, time.monotonic()
    while time.monotonic() - since < quiet_seconds:
        n = r.llen(queue)
        if n != last:
            last, since = n, time.monotonic()
        time.sleep(0.1)
    return last


def _queued_deliveries(r: redis.Redis, queue: str) -> tuple[int, int]:
    """Delivery ids in the queued task messages (a process_deliveries message carries several):
    (how many, how many distinct)."""
    ids: list[str] = []
    for raw in r.lrange(queue, 0, -1):
        message = json.loads(raw)
        args = json.loads(base64.b64decode(message["body"]))[0]
        if message["headers"]["task"] == "bbsync.process_deliveries":
            ids.extend(args[0])
        elif message["headers"]["task"] == "bbsync.process_delivery":
            ids.append(args[0])
    return len(ids), len(set(ids))


def _count_rows(db_url: str) -> int:
    with psycopg.connect(db_url) as c:
        return c.execute("select count(*) from deliveries").fetchone()[0]


if __name__ == "__main__":
    sys.exit(main())
