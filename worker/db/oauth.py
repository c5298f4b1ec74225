"""OAuth 2.0 authorizations under way: `bbsync connection oauth` made a one-time link, and a
person is on their way to Bitbucket's consent page and back. The logic lives in
worker.bitbucket.authorize.

- oauth_authorizations: one row per link: the connection, the SHA-256 of the link id and (once
  the link is opened) of the `state` sent to Bitbucket (never either in clear), the consumer's
  key, its secret and the PKCE verifier (Fernet ciphertext of JSON), the redirect_uri, when it
  was made, when it expires, when the link was opened and when the state was spent
"""
from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from worker.db.models import Base, UTCDateTime, utcnow


class OAuthAuthorization(Base):
    __tablename__ = "oauth_authorizations"

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"),
                                               index=True)
    # Hex SHA-256 of 256 random bits each: a lookup by hash reveals nothing of a near miss.
    link_hash: Mapped[str] = mapped_column(String(64), unique=True)
    state_hash: Mapped[str | None] = mapped_column(String(64), unique=True, nullable=True)
    client_id: Mapped[str] = mapped_column(String(200))
    # Fernet ciphertext of {"client_secret", "code_verifier"}; emptied once the state is spent.
    secret: Mapped[bytes] = mapped_column(LargeBinary)
    redirect_uri: Mapped[str] = mapped_column(String(2100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

    def __repr__(self) -> str:
        return f"<OAuthAuthorization id={self.id} connection={self.connection_id}>"
