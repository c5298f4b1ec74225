"""The Celery app. Configured from settings when Celery first needs its config, not at import.

Broker: Redis in production (REDIS_URL), RabbitMQ if BROKER_URL says amqp://, and otherwise
kombu's filesystem transport under var/broker, which needs no server: the embedded default
(with the repair in worker.queue.embedded_broker, so that a message is never read half-written).
"""
from __future__ import annotations

import gc

from celery import Celery
from celery.signals import worker_init, worker_process_init, worker_ready

from config.settings import Settings, get_settings
from worker.db import session as db_session
from worker.queue import embedded_broker

#: Longest delay any task of ours may be scheduled with (retry backoff cap). The broker's
#: visibility timeout must be longer, or Redis would hand a delayed task to a second worker.
MAX_TASK_DELAY_SECONDS = 600


def max_task_delay(settings: Settings) -> float:
    return min(MAX_TASK_DELAY_SECONDS, settings.visibility_timeout / 3)


def celery_config(settings: Settings) -> dict:
    transport_options: dict = {"visibility_timeout": settings.visibility_timeout}
    transport = None  # the broker URL's scheme says
    if settings.embedded_broker:
        transport = embedded_broker.TRANSPORT
        folder = settings.broker_folder
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        transport_options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "control_folder": str(folder / "control"),  # default is relative to the cwd
            "store_processed": False,
            # An idle worker looks at the folder 20 times a second (0.6% of a core, 0.35% at
            # 0.1 s); at a trickle of 50 events/s, received -> applied: p50 49 ms, p99 93 ms,
            # against 72 and 140 ms at 0.1 s (bench/pipeline.py --embedded, issue 14).
            "polling_interval": 0.05,
        }
    return {
        "broker_url": settings.broker_url,
        "broker_transport": transport,
        "broker_transport_options": transport_options,
        "broker_connection_retry_on_startup": True,
        # The receiver must answer Bitbucket within 10 s even when the broker is down: fail a
        # publish fast and let the stored delivery be enqueued later.
        "broker_connection_timeout": 2,
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        "task_default_queue": settings.queue,
        "task_ignore_result": True,
        "task_acks_late": True,  # a task is acknowledged only when it finished
        "task_reject_on_worker_lost": True,  # a worker killed mid-task hands the task back
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "timezone": "UTC",
    }


app = Celery("bbsync", include=["worker.queue.tasks", "worker.queue.beat"])


#: The periodic jobs run by the Procfile's `beat:` process (exactly one beat per deployment).
BEAT_SCHEDULE = {
    # Issues only, every 5 minutes: one call plus one per ~100 changed issues per repository.
    "reconcile": {"task": "bbsync.reconcile_all", "schedule": 300.0, "kwargs": {"comments": "none"}},
    # Comments cost a call per issue (Bitbucket lists them per issue): the issues touched since
    # the last comment pass, hourly; every linked issue (edits and deletions on issues nothing
    # else touched), nightly.
    "reconcile-comments": {"task": "bbsync.reconcile_all", "schedule": 3600.0,
                           "kwargs": {"comments": "changed"}},
    "reconcile-comment-scan": {"task": "bbsync.reconcile_all", "schedule": 86400.0,
                               "kwargs": {"comments": "all"}},
    "requeue-pending": {"task": "bbsync.requeue_pending", "schedule": 60.0},
    # Bodies of deliveries done with, past BBSYNC_DELIVERY_RETENTION_DAYS (rows and ledger stay).
    "prune-deliveries": {"task": "bbsync.prune_deliveries", "schedule": 3600.0},
    # Webhooks bbsync registered: put back what drifted; retire rotated-out secrets.
    "maintain-hooks": {"task": "bbsync.maintain_hooks", "schedule": 900.0},
}


@app.on_configure.connect
def _configure(sender: Celery, **_kwargs) -> None:
    settings = get_settings()
    sender.conf.update(celery_config(settings))
    sender.conf.beat_schedule = BEAT_SCHEDULE
    sender.conf.beat_schedule_filename = str(settings.var_dir / "celerybeat-schedule")


@worker_init.connect
def _ping_only_idle_connections(**_kwargs) -> None:
    """Tasks retry a dropped connection (OperationalError), so a worker pings a pooled one only
    if it sat idle (worker.db.session._ping_if_idle)."""
    db_session.PING_AFTER_IDLE_S = db_session.WORKER_PING_AFTER_IDLE_S


@worker_ready.connect
@worker_process_init.connect
def _freeze_startup_objects(**_kwargs) -> None:
    """Move what the worker made while starting (Celery, SQLAlchemy, our modules: some 150,000
    objects that live as long as the process) out of the garbage collector's sight, as the web
    process does (config/gunicorn.conf.py): otherwise every full collection walks them all,
    and at a trickle of events, each a message of its own, collections come per event."""
    gc.freeze()
