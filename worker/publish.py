"""Publish several Celery task messages in one go: the web process's dispatcher drains its queue
into a batch and hands it here.

Each message is still built by Celery's `send_task` (a stock `celery worker` consumes it); what a
batch shares is one pooled producer and, where the transport can (Redis), one pipeline for all
the pushes instead of a round trip and a new client per message. Other transports (AMQP, the
embedded filesystem broker) publish each message at once over the same producer.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("bbsync.tasks")

Job = tuple[str, "str | int"]
OPS_PER_MESSAGE = 16


def publish_many(jobs: Sequence[Job], app: Celery | None = None) -> int:
    """Publish task(arg) for each job, in order, on `app` (default: ours). Returns how many
    jobs, from the first, are surely queued; the caller keeps the rest and tries them again.

    A failed Redis pipeline may have pushed some of its messages before failing: they count as
    not queued and are sent again. A second message for the same id is harmless (a task finds
    finished work done); a missing one would leave a delivery waiting for the sweeper.
    """
    from worker.tasks import ENQUEUEABLE
    if app is None:
        from worker.celery_app import app

    if not jobs:
        return 0
    sent = 0
    batched = False
    try:
        with app.producer_or_acquire() as producer:
            batched = bool(getattr(producer, "supports_batch_publish", False))
            # kombu flushes on its own past max_size operations (one LPUSH per message, plus a
            # PEXPIRE per priority level on a queue with an expiry): it must not flush part of
            # the batch, or a later failure would hide which messages went out.
            with producer.batch(max_size=OPS_PER_MESSAGE * len(jobs)) if batched else nullcontext():
                for task, arg in jobs:
                    app.send_task(ENQUEUEABLE[task].name, args=[arg], producer=producer)
                    sent += 1
        return len(jobs)
    except Exception as exc:  # kombu raises a zoo of connection errors; all mean "not queued"
        done = 0 if batched else sent
        log.warning("enqueue_failed jobs=%d queued=%d error=%s", len(jobs), done, exc.__class__.__name__)
        return done
