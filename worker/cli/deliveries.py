"""`bbsync deliveries`: list the stored webhook deliveries, replay or dismiss the failed ones,
and queue them again."""
from __future__ import annotations

import os

import click

from worker.cli.base import fail, main


@main.group()
def deliveries() -> None:
    """Stored webhook deliveries."""


@deliveries.command("list")
@click.option("--connection", "connection_name", default=None)
@click.option("--failed", is_flag=True, help="Only failed (dead-lettered) and held deliveries.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
def deliveries_list(connection_name: str | None, failed: bool, limit: int) -> None:
    """Stored deliveries, newest first, with why each failed one failed."""
    from sqlalchemy import select
    from worker import connections
    from worker.db.models import Delivery
    from worker.db.session import transaction
    from worker.engine.states import DELIVERY_STUCK
    with transaction() as session:
        query = select(Delivery).order_by(Delivery.received_at.desc()).limit(limit)
        if connection_name:
            conn = connections.get(session, connection_name)
            if conn is None:
                fail(f"unknown connection {connection_name!r}")
            query = query.where(Delivery.connection_id == conn.id)
        if failed:
            query = query.where(Delivery.status.in_(DELIVERY_STUCK))
        rows = list(session.scalars(query))
        lines = [f"{d.id}  {d.received_at:%Y-%m-%d %H:%M:%S}  {d.status:<9} {d.event_key:<22} "
                 f"{d.issue_key or '-':<30} {d.error or ''}" for d in rows]
    click.echo("\n".join(lines) if lines else "no deliveries")


@deliveries.command("replay")
@click.argument("delivery_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Replay every failed delivery.")
def deliveries_replay(delivery_id: str | None, all_failed: bool) -> None:
    """Process a failed delivery again once its cause is fixed (or every one, with --failed)."""
    from worker.db.session import transaction
    from worker.sync import deliveries as store
    from worker.queue.tasks import enqueue_delivery
    if bool(delivery_id) == all_failed:
        fail("give a DELIVERY_ID or --failed")
    try:
        with transaction() as session:
            ids = (store.requeue_all_failed(session, None, os.environ.get("USER")) if all_failed
                   else store.replay(session, delivery_id, os.environ.get("USER")))
    except (LookupError, store.DeliveryError) as exc:
        fail(str(exc))
    queued = sum(enqueue_delivery(i) for i in ids)
    click.echo(f"replaying {len(ids)} delivery(ies); {queued} queued")


@deliveries.command("dismiss")
@click.argument("delivery_id")
def deliveries_dismiss(delivery_id: str) -> None:
    """Give up on a failed delivery; the events held behind it continue."""
    from worker.db.session import transaction
    from worker.sync import deliveries as store
    from worker.queue.tasks import enqueue_delivery
    try:
        with transaction() as session:
            released = store.dismiss(session, delivery_id, os.environ.get("USER"))
    except (LookupError, store.DeliveryError) as exc:
        fail(str(exc))
    for i in released:
        enqueue_delivery(i)
    click.echo(f"dismissed {delivery_id}; {len(released)} held delivery(ies) released")


@deliveries.command("requeue")
def deliveries_requeue() -> None:
    """Enqueue stored deliveries that were never processed (e.g. after a broker outage)."""
    from datetime import timedelta
    from worker.queue.tasks import requeue_pending
    click.echo(f"enqueued {requeue_pending(older_than=timedelta(0))} delivery(ies)")


@deliveries.command("prune")
@click.option("--days", type=click.IntRange(min=1), default=None,
              help="Prune bodies older than this (default: BBSYNC_DELIVERY_RETENTION_DAYS, 30).")
def deliveries_prune(days: int | None) -> None:
    """Empty the bodies of deliveries processed or ignored before the retention period (what the
    beat does hourly); failed, held and dismissed ones keep theirs, every row stays."""
    from datetime import timedelta

    from config.settings import get_settings
    from worker.db.models import utcnow
    from worker.sync.retention import prune_bodies
    days = days or get_settings().delivery_retention_days
    click.echo(f"pruned the bodies of {prune_bodies(utcnow() - timedelta(days=days))} delivery(ies) "
               f"done with over {days} day(s) ago")


@deliveries.command("enqueue")
@click.argument("delivery_ids", nargs=-1, required=True)
def deliveries_enqueue(delivery_ids: tuple[str, ...]) -> None:
    """Queue deliveries by id again. Safe: a delivery already processed is skipped."""
    from worker.queue.tasks import enqueue_delivery
    for delivery_id in delivery_ids:
        if not delivery_id.isalnum() or len(delivery_id) > 32:
            fail(f"{delivery_id!r} is not a delivery id")
    queued = sum(enqueue_delivery(d) for d in delivery_ids)
    click.echo(f"enqueued {queued} of {len(delivery_ids)}")
