"""Data kept no longer than needed: the bodies of deliveries that are done with (applied, or
ignored) are emptied after the retention period (BBSYNC_DELIVERY_RETENTION_DAYS, by the beat's
`prune-deliveries`, or `bbsync deliveries prune`). Failed, held, dismissed (a replay needs them)
and waiting deliveries keep theirs; every row, id and ledger entry stays."""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import select, update

from worker.db.models import Delivery
from worker.db.session import transaction
from worker.engine.states import DeliveryStatus

PRUNABLE = (DeliveryStatus.PROCESSED, DeliveryStatus.IGNORED)
BATCH = 2000


def prune_bodies(older_than: datetime, batch: int = BATCH) -> int:
    """Empty the bodies of deliveries done with before `older_than`, a batch per transaction
    (a backlog never holds one long lock). Returns how many were pruned."""
    pruned = 0
    while True:
        with transaction() as session:
            # (status, received_at) is indexed; a delivery is done with soon after it arrives.
            chosen = select(Delivery.id).where(Delivery.status.in_(PRUNABLE), Delivery.received_at < older_than,
                                              Delivery.body != "").limit(batch)
            done = session.execute(update(Delivery).where(Delivery.id.in_(chosen.scalar_subquery()))
                                   .values(body="").execution_options(synchronize_session=False)).rowcount
        pruned += done
        if done < batch:
            return pruned
