"""gunicorn settings for the web process: the Procfile's `web:` line, the demo, the integration
tests and the benchmarks all start gunicorn with this file, so that they run what production runs.

On PostgreSQL the workers are gevent's: a webhook request spends most of its life waiting on
the database, and a greenlet that waits costs a switch of a few microseconds where a thread
costs two context switches and a fight for the GIL. bench/ingest measured the receiver at about
1.5x the throughput and half the p99 of 8 threads per process (psycopg 3 yields to gevent by
itself). SQLite's driver does not yield: a greenlet waiting for SQLite's write lock would stall
every request in its process, so on SQLite (the embedded default) the workers are threads.

WEB_CONCURRENCY sets the number of worker processes (one per core; default 2).
"""
import gc
import os

workers = int(os.environ.get("WEB_CONCURRENCY", "2"))

if os.environ.get("DATABASE_URL", "").startswith("postgresql"):
    worker_class = "gevent"
    # Requests in flight per process; more connections wait in the listen backlog. As many as
    # the engine's pool holds (10 + 20 overflow, worker/db/session.py), so that no request waits
    # for a database connection; webhook deliveries share one anyway (webhooks/delivery_store.py).
    worker_connections = 30
else:
    worker_class = "gthread"
    threads = 8


def post_worker_init(worker):
    """Move everything the app made while loading (about 110,000 objects: Flask, SQLAlchemy,
    Celery, our modules) out of the garbage collector's sight. They live as long as the process,
    yet every full collection walked them all: about 70 ms in which the process answered
    nobody, enough to set the p99 of a loaded web process (bench/ingest, httpx client: p99 43
    -> 36 ms, median of six interleaved rounds). The objects made afterwards are collected as
    before."""
    gc.freeze()
