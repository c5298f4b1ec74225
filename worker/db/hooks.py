"""The Bitbucket webhooks bbsync registered for a connection (worker.sync.hooks does the work).

- connection_hooks: one row per repository of a connection whose hooks bbsync manages: the
  hook's uuid at Bitbucket (none while it is missing) and the webhook secret it was given, so
  that a rotation knows which hooks still sign with an old secret.
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models import Base, UTCDateTime, utcnow


class ConnectionHook(Base):
    __tablename__ = "connection_hooks"
    __table_args__ = (UniqueConstraint("connection_id", "repo"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    repo: Mapped[str] = mapped_column(String(255))           # "workspace/repo_slug"
    hook_uuid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    secret_id: Mapped[int | None] = mapped_column(
        ForeignKey("webhook_secrets.id", ondelete="SET NULL"), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
