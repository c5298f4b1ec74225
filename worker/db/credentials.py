"""The per-credential tables: the Bitbucket credentials themselves, and the request budget
counted against each one. The logic that uses them lives with the Bitbucket client
(worker.bitbucket.credentials: secret kinds, encryption, the OAuth refresh protocol;
worker.bitbucket.budget: the rolling-hour meter).

- credentials: one row per credential: its kind, a non-secret key, the encrypted secret
- api_budget: the requests sent per credential key and minute
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import CheckConstraint, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models import Base, UTCDateTime, utcnow


class Credential(Base):
    __tablename__ = "credentials"
    __table_args__ = (
        CheckConstraint("kind IN ('api_token', 'bearer', 'oauth')", name="ck_credentials_kind"),
        Index("ix_credentials_key", "key"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    # Non-secret and stable: "api_token:<email>", "oauth:<client id>", "bearer:<sha256 prefix>".
    key: Mapped[str] = mapped_column(String(255))
    secret: Mapped[bytes] = mapped_column(LargeBinary)       # Fernet ciphertext of JSON
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    def __repr__(self) -> str:
        return f"<Credential id={self.id} kind={self.kind} key={self.key}>"


class ApiBudget(Base):
    __tablename__ = "api_budget"

    credential_key: Mapped[str] = mapped_column(String(255), primary_key=True)
    # Minutes since the epoch (int(time / 60)): one bucket of the rolling hour.
    minute: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    count: Mapped[int] = mapped_column(Integer, default=0)
