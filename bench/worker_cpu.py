"""The worker's own CPU per event, in one process: a message of one delivery (a trickle, where
every delivery travels alone) against a message of several (a burst), same run, interleaved.

    .venv/bin/python bench/worker_cpu.py [--batch 11] [--messages 60] [--rounds 3] [--embedded]

No Celery and no broker: deliveries are stored by the real receiver (the Flask app, in this
process) and handed to what `process_deliveries` runs for a message the broker gives out for the
first time (worker.queue.tasks._run_together), timed by process CPU. What the two figures differ
by is the cost a message carries beside its events: the transaction, taking the runs, the
commit. Celery's own cost per message and a sleeping process's cold caches (both in
bench/pipeline.py part 2) come on top. Also reports the SQL statements per message.

Needs PostgreSQL (TEST_POSTGRES_URL, default on 127.0.0.1); --embedded uses SQLite instead.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402
from cryptography.fernet import Fernet  # noqa: E402

from bench.webhook_load import WEBHOOK_REPO, Sender, drop_database  # noqa: E402
from devstack.stack import Stack  # noqa: E402
from webhooks.signatures import sign  # noqa: E402

PG_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
SECRET = "bench-secret-" + uuid.uuid4().hex[:8]


def store(client, sender: Sender, n: int, queued: list) -> list[str]:
    """n issue:created deliveries through the receiver; their ids, in order."""
    start = len(queued)
    for issue in sender.take_ids(n):
        body = sender._body(issue)
        resp = client.post("/webhooks/bitbucket/bench", data=body, headers={
            "X-Event-Key": "issue:created", "X-Request-UUID": str(uuid.uuid4()),
            "X-Hub-Signature": sign(SECRET, body), "Content-Type": "application/json"})
        assert resp.status_code == 202, resp.get_data(as_text=True)
    return [arg for _task, arg in queued[start:]]


def timed(run, messages: list[list[str]]) -> float:
    """CPU seconds per event to run every message."""
    t = time.process_time()
    for ids in messages:
        outcome = run(ids)
        assert outcome is not None and set(outcome.values()) == {"processed"}, outcome
    return (time.process_time() - t) / sum(len(m) for m in messages)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=11, help="deliveries per message in a burst")
    ap.add_argument("--messages", type=int, default=60, help="burst messages per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--embedded", action="store_true", help="SQLite instead of PostgreSQL")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bbsync-bench-worker-"))
    db_name = f"bbsync_bench_{uuid.uuid4().hex[:8]}"
    if args.embedded:
        db_url = f"sqlite:///{tmp / 'bbsync.db'}"
    else:
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{db_name}"')
        db_url = PG_URL.rpartition("/")[0] + "/" + db_name
    os.environ.pop("REDIS_URL", None)
    os.environ.update(DATABASE_URL=db_url, BBSYNC_VAR_DIR=str(tmp),
                      BBSYNC_SECRET_KEYS=Fernet.generate_key().decode(), LOG_LEVEL="WARNING")
    try:
        stack = Stack(env=dict(os.environ), log_dir=tmp)
        stack.run("db", "upgrade")
        stack.run("connection", "add", "bench", "--repo", WEBHOOK_REPO, "--webhook-secret", SECRET)

        from sqlalchemy import event

        from webhooks import create_app
        from worker.db import session as db_session
        from worker.db.session import get_engine
        from worker.queue import tasks
        # As a Celery worker sets it at start (worker.queue.celery_app): it is the worker's path.
        db_session.PING_AFTER_IDLE_S = db_session.WORKER_PING_AFTER_IDLE_S
        queued: list = []
        client = create_app(enqueue=lambda task, arg: queued.append((task, arg)) or True).test_client()
        sender = Sender("", SECRET)
        statements = [0]
        event.listen(get_engine(), "before_cursor_execute", lambda *_a: statements.__setitem__(0, statements[0] + 1))

        def messages(size: int, count: int) -> list[list[str]]:
            ids = store(client, sender, size * count, queued)
            return [ids[k:k + size] for k in range(0, len(ids), size)]

        timed(tasks._run_together, messages(args.batch, 5) + messages(1, 20))  # warm-up
        burst, trickle, per_message = [], [], {}
        for _ in range(args.rounds):
            for size, out in ((args.batch, burst), (1, trickle)):
                batch = messages(size, args.messages if size > 1 else args.messages * args.batch // 3)
                before = statements[0]
                out.append(timed(tasks._run_together, batch))
                per_message[size] = (statements[0] - before) / len(batch)
        b, t = statistics.median(burst), statistics.median(trickle)
        print(f"worker CPU per issue:created event, in-process on {'SQLite' if args.embedded else 'PostgreSQL'} "
              f"(median of {args.rounds} rounds):")
        print(f"   message of {args.batch:2d}: {1e6 * b:6.0f} us per event  "
              f"({per_message[args.batch]:.1f} statements per message)  rounds: "
              + ", ".join(f"{1e6 * x:.0f}" for x in burst))
        print(f"   message of  1: {1e6 * t:6.0f} us per event  ({per_message[1]:.1f} statements per message)  "
              f"rounds: " + ", ".join(f"{1e6 * x:.0f}" for x in trickle))
        print(f"   ratio 1/{args.batch}: {t / b:.2f}; a message's own cost: ~{1e6 * (t - b) * args.batch / (args.batch - 1):.0f} us")
        return 0
    finally:
        drop_database(PG_URL, None if args.embedded else db_name)


if __name__ == "__main__":
    sys.exit(main())
