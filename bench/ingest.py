"""Receiver throughput and acknowledgement latency, against a bare Flask endpoint in the same run.

    .venv/bin/python bench/ingest.py [--seconds 10] [--concurrency 16] [--rounds 2] [--client both]

Needs PostgreSQL and Redis (TEST_POSTGRES_URL / TEST_REDIS_URL, defaults on 127.0.0.1). Both
endpoints run under production's gunicorn settings (config/gunicorn.conf.py, as the Procfile),
with other process or thread counts if BENCH_GUNICORN="--workers N --threads M" says so; rounds
alternate bare/real to share the machine's drift. The load comes from bench/loadgen.py, on this same machine: by default both of
its clients, a lean raw-socket one (what the servers cost) and httpx2 on threads (what an
application's client costs too; it flatters the ratio). Every request carries a distinct
X-Request-UUID and a valid signature; at the end the stored rows and the queued tasks are
counted against the acknowledged requests.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
import redis  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from bench import loadgen  # noqa: E402
from bench.machine import cpu_by_program, machine_cpu  # noqa: E402
from webhooks.signatures import sign  # noqa: E402
from devstack.stack import Stack  # noqa: E402

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BODY = (ROOT / "tests" / "fixtures" / "webhooks" / "kanboard__bitbucket_issue_opened.json").read_bytes()
SECRET = "bench-secret"
#: Extra gunicorn options for both servers, after config/gunicorn.conf.py (e.g. "--workers 3").
GUNICORN = os.environ.get("BENCH_GUNICORN", "").split()


def load(client: str, url: str, seconds: float, concurrency: int) -> dict:
    headers = {"X-Event-Key": "issue:created", "X-Hub-Signature": sign(SECRET, BODY),
               "Content-Type": "application/json"}
    cpu0, by0 = machine_cpu(), cpu_by_program()
    results = loadgen.run(client, url, BODY, headers, seconds, concurrency)
    cpu1, by1 = machine_cpu(), cpu_by_program()
    spent = {name: by1[name] - by0.get(name, 0.0) for name in by1}
    per_request = {name: 1000 * t / max(1, len(results)) for name, t in spent.items() if t > 0}
    per_request["(load generator, others)"] = 1000 * (cpu1[0] - cpu0[0]) / max(1, len(results)) - sum(per_request.values())
    latencies = sorted(lat for status, lat in results if status == 202)
    return {
        # Machine-wide, load generator included: whether the run was CPU-bound, and what one
        # request cost every process together.
        "busy": (cpu1[0] - cpu0[0]) / max(1e-9, cpu1[1] - cpu0[1]),
        "cpu_ms": 1000 * (cpu1[0] - cpu0[0]) / max(1, len(results)),
        "by_program": dict(sorted(per_request.items(), key=lambda kv: -kv[1])[:4]),
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
    ap.add_argument("--client", choices=(*loadgen.CLIENTS, "both"), default="both",
                    help="load generator (see bench/loadgen.py); both: each round runs both")
    args = ap.parse_args()
    clients = loadgen.CLIENTS if args.client == "both" else (args.client,)

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
        sizes = dict(zip(("workers", "threads"), _sizes(GUNICORN)))
        real = stack.start_web(**sizes) + "/webhooks/bitbucket/bench"
        bare_url = stack.start_web(**sizes, app="bare_app:app", chdir=str(ROOT / "bench")) + "/webhooks/bitbucket/bench"

        for client in clients:  # warm-up: connection pools, imports, caches
            load(client, real, 2, args.concurrency)
            load(client, bare_url, 2, args.concurrency)
        _settle(r, queue)  # the web processes publish from a background thread
        warm = _count_rows(db_url)
        r.delete(queue)

        # Rounds alternate bare and real, and clients, so that both share the machine's drift.
        runs: dict[tuple[str, str], list[dict]] = {}
        for _ in range(args.rounds):
            for client in clients:
                for name, url in (("bare", bare_url), ("real", real)):
                    runs.setdefault((client, name), []).append(load(client, url, args.seconds, args.concurrency))

        accepted = sum(x["accepted"] for (_, name), xs in runs.items() if name == "real" for x in xs)
        _settle(r, queue)
        queued, distinct = _queued_deliveries(r, queue)
        rows = _count_rows(db_url) - warm
        print(f"ingest benchmark: {args.rounds} round(s) x {args.seconds:.0f} s, "
              f"{args.concurrency} concurrent connections, gunicorn config/gunicorn.conf.py "
              f"({_worker_class(stack, real)} workers) {' '.join(GUNICORN)}")
        for client in clients:
            print(f"client {client}:")
            for name in ("bare", "real"):
                for i, x in enumerate(runs[client, name], 1):
                    print(f"  {name:<4} round {i}: {x['rps']:8.1f} req/s  p50 {x['p50_ms']:6.2f} ms  "
                          f"p99 {x['p99_ms']:6.2f} ms  errors {x['errors']}  machine CPU busy "
                          f"{100 * x['busy']:.0f}%, {x['cpu_ms']:.2f} ms per request (all processes)")
                    print("        CPU ms per request: " + ", ".join(f"{k} {v:.2f}" for k, v in x["by_program"].items()))
            bare_rps = statistics.mean(x["rps"] for x in runs[client, "bare"])
            real_rps = statistics.mean(x["rps"] for x in runs[client, "real"])
            print(f"  throughput ratio real/bare: {real_rps / bare_rps:.2f}")
            print(f"  real p50 {statistics.mean(x['p50_ms'] for x in runs[client, 'real']):.2f} ms, "
                  f"p99 {max(x['p99_ms'] for x in runs[client, 'real']):.2f} ms (worst round)")
        print(f"acknowledged {accepted}, rows stored {rows}, tasks queued {queued}: "
              f"lost {max(0, accepted - rows)}, duplicated {max(0, rows - accepted)}, "
              f"queue mismatch {queued - rows} ({distinct} distinct ids in {r.llen(queue)} messages)")
        return 0
    finally:
        stack.close()
        r.delete(queue)
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')


def _sizes(options: list[str]) -> tuple[int | None, int | None]:
    """--workers and --threads from BENCH_GUNICORN (None: the config file's)."""
    found = {opt: int(options[i + 1]) for i, opt in enumerate(options[:-1]) if opt in ("--workers", "--threads")}
    return found.get("--workers"), found.get("--threads")


def _worker_class(stack: Stack, url: str) -> str:
    """The worker class gunicorn says it uses, from the server's log."""
    log = (stack.log_dir / f"web-{url.rsplit(':', 1)[1].split('/')[0]}.log").read_text(errors="replace")
    return next((line.rsplit("Using worker: ", 1)[1].strip() for line in log.splitlines()
                 if "Using worker: " in line), "unknown")


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
