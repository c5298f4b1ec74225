"""How far the periodic scans of Bitbucket have read, per repository of a connection.

- reconcile_watermarks: the newest `updated_on` reconciliation has processed (worker.sync.watermarks)
- backfill_cursors: the last issue an (interruptible) backfill has processed (worker.sync.backfill)
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models import Base, UTCDateTime, utcnow


class ReconcileWatermark(Base):
    """How far reconciliation has read one repository of a connection."""

    __tablename__ = "reconcile_watermarks"

    connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True)
    repo: Mapped[str] = mapped_column(String(255), primary_key=True)
    # The newest Bitbucket `updated_on` (Bitbucket's clock) of the issues processed, and the
    # issue that had it. Reads start a little before it.
    updated_on: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    issue_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The same, for the comment pass (comments="changed"): the issues whose comments it listed.
    comments_updated_on: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    issues_seen: Mapped[int] = mapped_column(Integer, default=0)   # running total
    runs: Mapped[int] = mapped_column(Integer, default=0)
    last_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)


class BackfillCursor(Base):
    """How far the backfill of one repository of a connection has come."""

    __tablename__ = "backfill_cursors"

    connection_id: Mapped[int] = mapped_column(
        ForeignKey("connections.id", ondelete="CASCADE"), primary_key=True)
    repo: Mapped[str] = mapped_column(String(255), primary_key=True)
    since: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)  # the run's lower bound
    # The last issue fully processed, in (updated_on, id) order; None before the first page.
    updated_on: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    issue_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="running")  # running | done
    pages: Mapped[int] = mapped_column(Integer, default=0)
    issues_seen: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
