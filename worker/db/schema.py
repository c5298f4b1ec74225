"""The whole schema: the core tables plus those that live beside the code that owns them.
Import this (not models alone) wherever the complete metadata matters: Alembic, create_all."""
from worker.bitbucket.budget import ApiBudget  # noqa: F401
from worker.bitbucket.credentials import Credential  # noqa: F401
from worker.db.models import Base
from worker.sync.backfill import BackfillCursor  # noqa: F401
from worker.sync.reconcile import ReconcileWatermark  # noqa: F401

metadata = Base.metadata
