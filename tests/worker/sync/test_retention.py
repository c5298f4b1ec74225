"""Retention: bodies of deliveries done with are emptied after the retention period; failed,
held, dismissed and waiting ones keep theirs, and every row and ledger entry stays."""
from __future__ import annotations

from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from worker import connections
from worker.cli import main
from worker.db.models import Delivery, LedgerEntry, utcnow
from worker.db.session import transaction
from worker.queue import beat, celery_app
from worker.sync import retention


@pytest.fixture
def stored(db):
    with transaction() as session:
        conn, _ = connections.upsert(session, connections.ConnectionSpec(
            name="acme", repos=("acme/widgets",), webhook_secrets=("s",)))
        old, new = utcnow() - timedelta(days=31), utcnow() - timedelta(days=29)
        for name, status, when in [("oldprocessed", "processed", old), ("oldignored", "ignored", old),
                                   ("newprocessed", "processed", new), ("oldfailed", "failed", old),
                                   ("oldheld", "held", None), ("olddismissed", "dismissed", old),
                                   ("waiting", "received", None)]:
            session.add(Delivery(id=name, connection_id=conn.id, request_uuid=name, event_key="issue:created",
                                 attempt=1, body='{"issue": {}}', status=status, received_at=when or old,
                                 processed_at=when))
            session.add(LedgerEntry(connection_id=conn.id, direction="forward", outcome="noop", delivery_id=name))


def _bodies() -> dict[str, str]:
    with transaction() as session:
        return dict(session.execute(select(Delivery.id, Delivery.body)).all())


def test_only_bodies_of_deliveries_done_with_past_the_period_are_emptied(stored):
    # Batches of one: several batches, each its own transaction.
    assert retention.prune_bodies(utcnow() - timedelta(days=30), batch=1) == 2
    bodies = _bodies()
    assert {k for k, v in bodies.items() if v == ""} == {"oldprocessed", "oldignored"}
    assert len(bodies) == 7  # every row stays, and every ledger entry
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(LedgerEntry)) == 7
    assert beat.prune_deliveries() == 0  # a second run has nothing to do


def test_the_period_is_a_setting_and_the_command_says_what_it_did(stored, monkeypatch):
    from config.settings import get_settings
    monkeypatch.setenv("BBSYNC_DELIVERY_RETENTION_DAYS", "40")
    get_settings.cache_clear()
    assert beat.prune_deliveries() == 0
    result = CliRunner().invoke(main, ["deliveries", "prune", "--days", "1"])
    assert result.exit_code == 0 and "pruned the bodies of 3 delivery(ies)" in result.output
    for bad in (["--days", "0"], ["--days", "-3"], ["--days", "x"]):
        result = CliRunner().invoke(main, ["deliveries", "prune", *bad])
        assert result.exit_code == 2, result.output
    get_settings.cache_clear()


def test_the_beat_runs_it():
    assert celery_app.BEAT_SCHEDULE["prune-deliveries"]["task"] == beat.prune_deliveries.name
