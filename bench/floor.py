"""The floor of bench/pipeline.py part 0: a plain durable webhook pipeline as a tutorial writes it.

A Flask receiver verifies the HMAC, inserts the body in its own transaction and enqueues one
Celery task per delivery (Redis); the task, in one transaction, locks and reads the body, parses
it, writes one ledger row and marks the delivery processed. No batching, no group commit.
Served and run by the Procfile's command lines, with this module in place of the product's:

    gunicorn --config config/gunicorn.conf.py --bind 0.0.0.0:$PORT "bench.floor:create_app()"
    celery -A bench.floor worker --loglevel=INFO --concurrency=4

Environment: DATABASE_URL (postgresql://...), REDIS_URL, BBSYNC_QUEUE (the queue's name),
FLOOR_SECRET (the webhook secret). It imports nothing of bbsync's (config, webhooks, worker):
the tables are its own, made by create_tables().
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import uuid

from celery import Celery
from flask import Flask, abort, jsonify, request
from sqlalchemy import Engine, create_engine, text

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS floor_deliveries (
        id text PRIMARY KEY,
        event_key text NOT NULL,
        body text NOT NULL,
        status text NOT NULL,
        received_at timestamptz NOT NULL,
        processed_at timestamptz)""",
    """CREATE TABLE IF NOT EXISTS floor_ledger (
        id bigserial PRIMARY KEY,
        delivery_id text NOT NULL REFERENCES floor_deliveries (id),
        event_key text NOT NULL,
        issue_id bigint,
        outcome text NOT NULL,
        created_at timestamptz NOT NULL)""",
)


def sqlalchemy_url(raw: str) -> str:
    """postgresql://... names no driver; SQLAlchemy would pick psycopg2, we have psycopg 3
    (which yields to gevent by itself, as config/gunicorn.conf.py says)."""
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix):]
    return raw


_engines: dict[int, Engine] = {}


def engine() -> Engine:
    """One engine per process: a forked Celery child must not share its parent's connections."""
    pid = os.getpid()
    if pid not in _engines:
        _engines[pid] = create_engine(sqlalchemy_url(os.environ["DATABASE_URL"]))
    return _engines[pid]


def create_tables(db_url: str) -> None:
    eng = create_engine(sqlalchemy_url(db_url))
    try:
        with eng.begin() as conn:
            for statement in SCHEMA:
                conn.execute(text(statement))
    finally:
        eng.dispose()


# -- the worker ----------------------------------------------------------------------------------

celery = Celery("floor")
celery.conf.update(
    broker_url=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
    broker_connection_retry_on_startup=True,
    task_default_queue=os.environ.get("BBSYNC_QUEUE", "floor"),
    task_acks_late=True,  # acknowledged when done: a crashed worker's task is run again
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_serializer="json",
    accept_content=["json"],
)


@celery.task(name="floor.process")
def process(delivery_id: str) -> None:
    with engine().begin() as conn:  # one transaction: commit at the end, rollback on error
        row = conn.execute(text("SELECT event_key, body, status FROM floor_deliveries "
                                "WHERE id = :id FOR UPDATE"), {"id": delivery_id}).one_or_none()
        if row is None or row.status == "processed":  # unknown, or a redelivered task
            return
        payload = json.loads(row.body)
        conn.execute(text("INSERT INTO floor_ledger (delivery_id, event_key, issue_id, outcome, created_at) "
                          "VALUES (:id, :key, :issue, 'applied', now())"),
                     {"id": delivery_id, "key": row.event_key,
                      "issue": (payload.get("issue") or {}).get("id")})
        conn.execute(text("UPDATE floor_deliveries SET status = 'processed', processed_at = now() "
                          "WHERE id = :id"), {"id": delivery_id})


# -- the web app ---------------------------------------------------------------------------------

def create_app() -> Flask:
    app = Flask(__name__)
    secret = os.environ["FLOOR_SECRET"].encode("utf-8")

    @app.get("/healthz")
    def healthz():
        return jsonify({"ok": True})

    @app.post("/webhooks/bitbucket/<name>")
    def receive(name: str):
        body = request.get_data()
        expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
        given = request.headers.get("X-Hub-Signature", "")
        if not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8")):
            abort(401)
        event_key = request.headers.get("X-Event-Key")
        if not event_key:
            abort(400)
        try:
            text_body = body.decode("utf-8")
        except UnicodeDecodeError:
            abort(400)
        delivery_id = uuid.uuid4().hex
        with engine().begin() as conn:
            conn.execute(text("INSERT INTO floor_deliveries (id, event_key, body, status, received_at) "
                              "VALUES (:id, :key, :body, 'received', now())"),
                         {"id": delivery_id, "key": event_key, "body": text_body})
        process.delay(delivery_id)
        return jsonify({"delivery": delivery_id}), 202

    return app
