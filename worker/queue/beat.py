"""The beat's housekeeping tasks (worker.queue.celery_app's BEAT_SCHEDULE): retention and the
webhooks bbsync made. The sync's own tasks are in worker.queue.tasks."""
from __future__ import annotations

import logging
from datetime import timedelta

from config.settings import get_settings
from worker.db.models import utcnow
from worker.queue.celery_app import app
from worker.sync import hooks, retention

log = logging.getLogger("bbsync.worker")


@app.task(name="bbsync.prune_deliveries")
def prune_deliveries() -> int:
    """The beat's retention job: bodies of deliveries done with, past the retention period."""
    days = get_settings().delivery_retention_days
    pruned = retention.prune_bodies(utcnow() - timedelta(days=days))
    if pruned:
        log.info("deliveries.pruned count=%d older_than_days=%d", pruned, days)
    return pruned


@app.task(name="bbsync.maintain_hooks")
def maintain_hooks() -> dict:
    """The beat's hook job: retire rotated-out secrets whose overlap ended, and repair the hooks
    of every connection that registered them (each write and failure is a ledger entry)."""
    summary = {"retired": hooks.retire_expired(), "repaired": 0, "failed": 0}
    for name in hooks.registered():
        try:
            results = hooks.register(name)
        except Exception as exc:  # one connection's trouble must not stop the others'
            log.warning("hooks.repair_failed connection=%s error=%s", name, type(exc).__name__)
            summary["failed"] += 1
            continue
        summary["repaired"] += sum(1 for r in results if r.actions)
        summary["failed"] += sum(1 for r in results if r.error)
    return summary
