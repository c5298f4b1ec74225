"""API tokens: who may call the HTTP API (`/api/...`). The logic lives in worker.tokens.

- api_tokens: one row per token: its name, the SHA-256 of the token (never the token), its
  scope (admin, or the connections in api_token_connections), read-only, and when it was
  made, last used and revoked
- api_token_connections: the connections a connection-scoped token may see
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column, relationship

from worker.db.models import Base, Connection, UTCDateTime, utcnow


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # Hex SHA-256 of the token: a token is 256 random bits, so a fast hash is enough, and a
    # lookup by it reveals nothing of a near miss.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    admin: Mapped[bool] = mapped_column(Boolean, default=False)
    read_only: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    connections: Mapped[list[Connection]] = relationship(secondary="api_token_connections",
                                                         order_by="Connection.name")


class ApiTokenConnection(Base):
    __tablename__ = "api_token_connections"

    token_id: Mapped[int] = mapped_column(ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"),
                                               primary_key=True)
