"""The web process's direct Redis publish path (worker/queue/redis_queue.py) pushes what Celery's
send_task pushes through kombu, field by field: a Celery or kombu upgrade that changes the
message fails here. (The integration tests run a stock `celery worker` on these messages.)"""
from __future__ import annotations

import base64
import json
import threading

import pytest

from tests.webhooks.conftest import celery_for, queued
from worker.queue import redis_queue
from worker.queue.publish import publish_many

#: Differ between any two messages: fresh ids.
FRESH = {("headers", "id"), ("headers", "root_id"), ("properties", "correlation_id"),
         ("properties", "delivery_tag")}


def _flatten(message: dict) -> dict:
    out = {}
    for section in ("headers", "properties"):
        for key, value in message[section].items():
            out[(section, key)] = value
    for key, value in message.items():
        if key not in ("headers", "properties", "body"):
            out[key] = value
    out["body"] = json.loads(base64.b64decode(message["body"]))
    return out


@pytest.mark.parametrize("name, args", [
    ("bbsync.process_delivery", ["0f" * 16]),
    ("bbsync.process_deliveries", [["a" * 32, "b" * 32]]),
    ("bbsync.push_link", [7]),
    # Not our tasks' args, but the message must still be Celery's: saferepr writes these its way.
    ("bbsync.process_deliveries", [["it's", 'a "quote"', "back\\slash"]]),
    ("bbsync.process_deliveries", [[[1, [2]]], 1.5]),
])
def test_a_pushed_message_is_the_one_send_task_would_queue(redis_app, name, args):
    app, client, queue = redis_app
    # send_task takes a registered task's options (time limits, routing) into its message:
    # register ours, so that an option added to one of them shows up here as a difference.
    from worker.queue.celery_app import app as production
    from worker.queue import tasks  # noqa: F401 - registers them
    app.tasks[name] = production.tasks[name]
    app.send_task(name, args=args)
    redis_queue.RedisTaskQueue(app).push([(name, args)])
    by_celery, ours = (_flatten(m) for m in queued(client, queue))

    assert ours.keys() == by_celery.keys()
    assert {k: v for k, v in ours.items() if k not in FRESH} == \
           {k: v for k, v in by_celery.items() if k not in FRESH}
    assert ours["headers", "id"] == ours["headers", "root_id"] == ours["properties", "correlation_id"]
    assert ours["headers", "id"] != by_celery["headers", "id"]
    assert ours["body"][0] == args


def test_messages_from_one_template_differ_only_in_ids_and_args_and_name_their_thread(redis_app):
    app, client, queue = redis_app
    pusher = redis_queue.RedisTaskQueue(app)
    name = "bbsync.process_deliveries"
    pusher.push([(name, [["a" * 32]]), (name, [["b" * 32, "c" * 32]])])
    elsewhere = threading.Thread(target=pusher.push, args=([(name, [["d" * 32]])],))
    elsewhere.start()
    elsewhere.join()
    first, second, third = (_flatten(m) for m in queued(client, queue))

    assert [m["body"][0] for m in (first, second, third)] == [[["a" * 32]], [["b" * 32, "c" * 32]], [["d" * 32]]]
    assert second["headers", "argsrepr"] == repr([["b" * 32, "c" * 32]])
    assert len({m["headers", "id"] for m in (first, second, third)}) == 3
    varying = FRESH | {"body", ("headers", "argsrepr")}
    assert {k: v for k, v in first.items() if k not in varying} == \
           {k: v for k, v in second.items() if k not in varying}
    # Celery names the publishing thread in reply_to; another thread's message names its own.
    assert first["properties", "reply_to"] == app.thread_oid != third["properties", "reply_to"]


def test_only_a_plain_redis_broker_is_published_to_directly(tmp_path):
    assert redis_queue.supports(celery_for({"REDIS_URL": "redis://127.0.0.1:6379/0"}))
    assert redis_queue.supports(celery_for({"REDIS_URL": "rediss://cache.internal:6380/1"}))
    assert not redis_queue.supports(celery_for({"BBSYNC_VAR_DIR": str(tmp_path)}))  # embedded
    assert not redis_queue.supports(celery_for({"BROKER_URL": "amqp://guest@127.0.0.1//"}))
    prefixed = celery_for({"REDIS_URL": "redis://127.0.0.1:6379/0"})
    prefixed.conf.broker_transport_options = {"global_keyprefix": "tenant1:"}
    assert not redis_queue.supports(prefixed)  # kombu's own path knows the prefix


def test_a_broker_that_is_down_queues_nothing_and_reports_it(tmp_path):
    app = celery_for({"REDIS_URL": "redis://127.0.0.1:1/0", "BBSYNC_VAR_DIR": str(tmp_path)})
    assert publish_many([("process_delivery", "d1"), ("push_link", 2)], app=app) == 0
