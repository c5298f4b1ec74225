"""Celery task messages pushed straight onto a Redis list: the web process's publish path.

Celery's `send_task` over kombu costs the web process about 0.6 ms of CPU for a batch of one
message: kombu builds a new Redis client for every batch (redis-py fills 169 response callbacks
per client), wraps each publish in its retry and declare machinery, and routes it through the
virtual exchange. Done here, the same batch costs about 0.25 ms.

What is pushed is what kombu's Redis transport pushes for `send_task(name, args)` on the
default queue: Celery's own protocol-2 headers and body (`app.amqp.as_task_v2`) in kombu's
JSON envelope, LPUSHed onto the queue's list, where a stock `celery worker` BRPOPs it.
tests/webhooks/test_redis_queue.py holds the two side by side, field by field, so that an
upgrade of Celery or kombu that changes the envelope fails there rather than in production.

Only for the plain layout: a `redis://` or `rediss://` broker, no key prefix, no priority
steps, and the default queue (no `task_queues` or `task_routes`, so no queue options such as an
expiry). Anything else goes through `send_task` (worker.queue.publish).
"""
from __future__ import annotations

import base64
import json
import os
import re
import uuid
from typing import TYPE_CHECKING, Sequence

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery.utils.saferepr import saferepr

if TYPE_CHECKING:
    from celery import Celery

#: (task name, args) for one message.
Message = tuple[str, list]

#: A repr that saferepr writes the same way: numbers and quote-free strings in at most two
#: levels of lists (while task_repr_maxlevels is 2 or more; Celery's default is 3).
_PLAIN = re.compile(r"\[(\[[\w' ,:-]*\]|[\w' ,:-])*\]")


def supports(app: Celery) -> bool:
    """Whether this app's broker takes messages straight from here."""
    conf = app.conf
    options = conf.broker_transport_options or {}
    return (conf.broker_url.split("://", 1)[0] in ("redis", "rediss")
            and not options.get("global_keyprefix") and not options.get("priority_steps")
            and not conf.task_queues and not conf.task_routes)


class RedisTaskQueue:
    """One Redis client for the process's life (redis-py's pool is thread-safe), and one LPUSH
    of all a batch's messages: one round trip, and all or none of them queued."""

    def __init__(self, app: Celery):
        conf = app.conf
        self._app = app
        self._queue = conf.task_default_queue
        self._templates: dict[tuple[str, int, str], tuple[dict, dict, tuple]] = {}
        timeout = conf.broker_connection_timeout
        # No retries inside redis-py: the caller keeps what failed and tries again later.
        self._client = redis.Redis.from_url(conf.broker_url, socket_connect_timeout=timeout,
                                            socket_timeout=timeout, retry=Retry(NoBackoff(), 0))

    def push(self, messages: Sequence[Message]) -> None:
        """Queue every message, or raise (redis.RedisError): then none counts as queued."""
        # LPUSH of several values pushes them one after another, each onto the head, as that
        # many LPUSHes would: the worker's BRPOP takes them in order. One command is atomic, and
        # cost less than a pipeline (an object, a command stack, a reply per message).
        if messages:
            self._client.lpush(self._queue, *(self.envelope(name, args) for name, args in messages))

    def envelope(self, name: str, args: list) -> str:
        """The JSON kombu's Redis transport would push for send_task(name, args)."""
        task_id = str(uuid.uuid4())
        headers, properties, body = self._template(name)
        return json.dumps({
            "body": base64.b64encode(json.dumps([args, *body[1:]]).encode()).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {**headers, "id": task_id, "root_id": task_id, "argsrepr": self._argsrepr(args)},
            "properties": {
                **properties,
                "correlation_id": task_id,
                "delivery_mode": 2,  # persistent: kombu's default for a durable queue
                "delivery_info": {"exchange": "", "routing_key": self._queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        })

    def _template(self, name: str) -> tuple[dict, dict, tuple]:
        """Celery's headers, properties and body for a `name` message, made once per process
        and thread (the origin names the process, reply_to the thread); a message differs from
        it only in its ids and its args. Building them afresh cost more than the rest of the
        message together."""
        reply_to = self._app.thread_oid  # Celery's id for this thread, kept in a thread-local
        key = (name, os.getpid(), reply_to)
        made = self._templates.get(key)
        if made is None:
            headers, properties, body, _sent_event = self._app.amqp.as_task_v2(
                "", name, args=[], kwargs={}, reply_to=reply_to, ignore_result=None)
            made = self._templates[key] = (headers, properties, body)
        return made

    def _argsrepr(self, args: list) -> str:
        """Celery's argsrepr for args. For the ids and numbers that are our tasks' args, and
        within the length Celery would cut, that is repr(args), for a tenth of saferepr's CPU."""
        maxsize, maxlevels = self._app.amqp.argsrepr_maxsize, self._app.conf.task_repr_maxlevels
        text = repr(args)
        if len(text) <= maxsize and maxlevels >= 2 and _PLAIN.fullmatch(text):
            return text
        return saferepr(args, maxsize, maxlevels=maxlevels)
