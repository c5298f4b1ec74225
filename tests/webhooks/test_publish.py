"""Batch publishing of Celery task messages: one Redis LPUSH per batch, stock messages, and an
honest count of what is surely queued when the broker fails. (Redis and Celery helpers: conftest.py.)"""
from __future__ import annotations

import base64
import json
import os

import redis

from tests.webhooks.conftest import celery_for, queued
from worker.queue.publish import publish_many


def test_a_batch_is_one_redis_command_of_stock_celery_messages(redis_app, monkeypatch):
    app, client, queue = redis_app
    assert publish_many([("process_delivery", "first")], app=app) == 1
    client.delete(queue)
    commands = []
    original = redis.Redis.execute_command

    def counting(self, *args, **options):
        commands.append(args[:2] + (len(args) - 2,))
        return original(self, *args, **options)

    monkeypatch.setattr(redis.Redis, "execute_command", counting)
    jobs = ([("process_delivery", "lone"), ("push_link", 3)] + [("process_delivery", f"d{i}") for i in range(5)]
            + [("push_link", 7)])
    assert publish_many(jobs, app=app) == 8
    assert commands == [("LPUSH", queue, 4)]  # one round trip for the four messages

    messages = queued(client, queue)
    # A run of deliveries travels as one message, and so does a lone one (counted with its work).
    assert [m["headers"]["task"] for m in messages] == [
        "bbsync.process_deliveries", "bbsync.push_link", "bbsync.process_deliveries", "bbsync.push_link"]
    args = [json.loads(base64.b64decode(m["body"]))[0] for m in messages]
    assert args == [[["lone"]], [3], [["d0", "d1", "d2", "d3", "d4"]], [7]]
    assert len({m["headers"]["id"] for m in messages}) == 4
    assert all(m["properties"]["delivery_info"]["routing_key"] == queue for m in messages)


def test_a_long_run_of_deliveries_is_split_so_that_a_burst_spreads_over_the_workers():
    from worker.queue.publish import IDS_PER_MESSAGE, messages
    jobs = [("process_delivery", f"d{i}") for i in range(2 * IDS_PER_MESSAGE + 1)]
    out = messages(jobs)
    assert [(name, covered) for name, _args, covered in out] == [
        ("bbsync.process_deliveries", IDS_PER_MESSAGE), ("bbsync.process_deliveries", IDS_PER_MESSAGE),
        ("bbsync.process_deliveries", 1)]
    assert [i for _name, args, _ in out for i in args[0]] == [arg for _task, arg in jobs]


def test_a_failed_push_counts_nothing_as_queued(redis_app, monkeypatch):
    app, client, queue = redis_app

    def broken(self, *args, **options):
        raise redis.exceptions.ConnectionError("the broker went away")

    monkeypatch.setattr(redis.Redis, "execute_command", broken)
    assert publish_many([("process_delivery", f"d{i}") for i in range(4)], app=app) == 0
    monkeypatch.undo()
    assert client.llen(queue) == 0
    assert publish_many([("process_delivery", "again")], app=app) == 1  # the kept client still works
    assert client.llen(queue) == 1


def test_an_unbatched_transport_reports_the_jobs_before_the_failure(tmp_path, monkeypatch):
    # The embedded filesystem broker, like AMQP, cannot defer a publish: each message goes out
    # at once, so the ones before a failure are surely queued.
    app = celery_for({"BBSYNC_VAR_DIR": str(tmp_path), "BBSYNC_QUEUE": "q"})
    from worker.queue import embedded_broker
    original, calls = os.replace, []

    def replace_failing_from_third(src, dst):
        # The embedded broker renames each written message into the queue folder; from the
        # third on the disk is full (Celery retries the publish once: it fails again).
        calls.append(dst)
        if len(calls) >= 3:
            raise OSError(28, "No space left on device")
        return original(src, dst)

    monkeypatch.setattr(embedded_broker.os, "replace", replace_failing_from_third)
    # Messages: d0 | push 1 | [d1, d2] (fails) | push 2. Two jobs are surely queued.
    jobs = [("process_delivery", "d0"), ("push_link", 1), ("process_delivery", "d1"),
            ("process_delivery", "d2"), ("push_link", 2)]
    assert publish_many(jobs, app=app) == 2
    files = list((tmp_path / "broker" / "queue").glob("*.msg"))
    assert len(files) == 2
    assert list((tmp_path / "broker" / "staging").iterdir()) == []  # the failed one left nothing


def test_nothing_to_publish_touches_no_broker():
    assert publish_many([], app=celery_for({"BROKER_URL": "redis://127.0.0.1:1/0"})) == 0
