"""Publish several Celery task messages in one go: the web process's dispatcher drains its queue
into a batch and hands it here.

A run of delivery jobs becomes one `process_deliveries` message (see worker.queue.tasks): per
request, a message costs the web process more CPU than anything else it does. On a plain Redis
broker the batch's messages go out as one LPUSH from a client kept for the process's life
(worker.queue.redis_queue): the messages kombu would push, for less than half the CPU.
Other brokers (AMQP, the embedded filesystem broker) get each message from Celery's `send_task`
over one pooled producer, published at once.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from functools import lru_cache
from typing import TYPE_CHECKING, Sequence

from worker.queue import redis_queue, task_names

if TYPE_CHECKING:
    from celery import Celery

log = logging.getLogger("bbsync.tasks")

Job = tuple[str, "str | int"]
OPS_PER_MESSAGE = 16
#: Deliveries per message: enough to spare the web process, few enough that a burst still
#: spreads over every worker.
IDS_PER_MESSAGE = 16


def messages(jobs: Sequence[Job]) -> list[tuple[str, list, int]]:
    """The task messages for `jobs`, in order: (task name, args, how many jobs it carries).
    A run of deliveries goes as one `process_deliveries` message (up to IDS_PER_MESSAGE): the
    message, not the delivery, is what costs the web process CPU. A lone one too: handed out
    for the first time, `process_deliveries` counts its run in the transaction that applies
    it (one commit), where `process_delivery` commits the count apart first (two); at a
    steady trickle, where each delivery is a message of its own, that second commit was most
    of the difference in worker CPU per event from a burst (issue 14)."""
    out: list[tuple[str, list, int]] = []
    run: list = []

    def end_run() -> None:
        if run:
            out.append((task_names.PROCESS_DELIVERIES, [list(run)], len(run)))
        run.clear()

    for task, arg in jobs:
        if task == "process_delivery":
            run.append(arg)
            if len(run) == IDS_PER_MESSAGE:
                end_run()
        else:
            end_run()
            out.append((task_names.BY_JOB[task], [arg], 1))
    end_run()
    return out


def publish_many(jobs: Sequence[Job], app: Celery | None = None) -> int:
    """Publish task(arg) for each job, in order, on `app` (default: ours). Returns how many
    jobs, from the first, are surely queued; the caller keeps the rest and tries them again.

    A Redis LPUSH whose answer was lost may have queued its messages: they count as not queued
    and are sent again. A second message for the same id is harmless (a task finds finished
    work done); a missing one would leave a delivery waiting for the sweeper.
    """
    if app is None:
        from worker.queue.celery_app import app

    if not jobs:
        return 0
    queue = _redis_queue(app)
    if queue is not None:
        try:
            queue.push([(name, args) for name, args, _covered in messages(jobs)])
            return len(jobs)
        except Exception as exc:  # noqa: BLE001 - any failure means "not surely queued"
            log.warning("enqueue_failed jobs=%d queued=0 error=%s", len(jobs), exc.__class__.__name__)
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
                for name, args, covered in messages(jobs):
                    app.send_task(name, args=args, producer=producer)
                    sent += covered
        return len(jobs)
    except Exception as exc:  # kombu raises a zoo of connection errors; all mean "not queued"
        done = 0 if batched else sent
        log.warning("enqueue_failed jobs=%d queued=%d error=%s", len(jobs), done, exc.__class__.__name__)
        return done


@lru_cache(maxsize=8)
def _redis_queue(app: Celery) -> redis_queue.RedisTaskQueue | None:
    """The app's direct Redis publisher, made once (with its client), or None for other brokers."""
    return redis_queue.RedisTaskQueue(app) if redis_queue.supports(app) else None
