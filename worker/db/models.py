"""The core tables, and the Base and column types every table uses (the other tables are in
worker.db.credentials, worker.db.watermarks and worker.db.helpdesk; worker.db.schema gathers
all for Alembic).

- connections, connection_repos, webhook_secrets: who we sync for, and how they prove it is them
- deliveries: every webhook we acknowledged, stored before the 202
- links, comment_links, shadows: which issue is which ticket, and the merge base per field
- ledger: every decision, append-only
"""
from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (JSON, Boolean, DateTime, ForeignKey, Index, Integer, LargeBinary, String,
                        Text, TypeDecorator, UniqueConstraint)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator):
    """Timestamps are always timezone-aware UTC, also on SQLite (which stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    pass


class Connection(Base):
    __tablename__ = "connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    target: Mapped[str] = mapped_column(String(32), default="local")
    api_url: Mapped[str] = mapped_column(String(255), default="https://api.bitbucket.org/2.0")
    # Per-connection overrides of the default mapping tables (validated before they are stored).
    mapping_override: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Per-field conflict policy overrides; the default is latest_wins.
    policies: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    push_internal_notes: Mapped[bool] = mapped_column(Boolean, default=False)
    credential_id: Mapped[int | None] = mapped_column(
        ForeignKey("credentials.id", ondelete="SET NULL"), nullable=True)
    # Set when Bitbucket answers 410 Gone: the repository's issue tracker was removed. Work for
    # the connection stops retrying; everything already held is kept.
    tracker_removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)

    repos: Mapped[list[ConnectionRepo]] = relationship(
        back_populates="connection", cascade="all, delete-orphan", order_by="ConnectionRepo.full_name")
    secrets: Mapped[list[WebhookSecret]] = relationship(
        back_populates="connection", cascade="all, delete-orphan", order_by="WebhookSecret.id")


class ConnectionRepo(Base):
    __tablename__ = "connection_repos"
    __table_args__ = (UniqueConstraint("connection_id", "full_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    full_name: Mapped[str] = mapped_column(String(255))  # "workspace/repo_slug"

    connection: Mapped[Connection] = relationship(back_populates="repos")


class WebhookSecret(Base):
    """A webhook secret, encrypted at rest (we need the plaintext back to compute HMACs)."""

    __tablename__ = "webhook_secrets"

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    ciphertext: Mapped[bytes] = mapped_column(LargeBinary)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    connection: Mapped[Connection] = relationship(back_populates="secrets")


class Delivery(Base):
    """A webhook as received. Stored and committed before it is acknowledged (promise 1)."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("connection_id", "request_uuid", name="uq_delivery_request"),
        Index("ix_deliveries_status_received", "status", "received_at"),
        Index("ix_deliveries_issue", "connection_id", "issue_key", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    request_uuid: Mapped[str] = mapped_column(String(64))
    hook_uuid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    event_key: Mapped[str] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, default=1)
    body: Mapped[str] = mapped_column(Text)
    # "workspace/repo#id": which issue the event is about, so that a failed event can hold
    # back the later events of the same issue (they must not apply out of order).
    issue_key: Mapped[str | None] = mapped_column(String(300), nullable=True)
    # received -> processed | failed | held (behind a failed one) -> dismissed, or ignored
    # straight away for events we do not sync
    status: Mapped[str] = mapped_column(String(16), default="received")
    # How many times processing started. A task that kills its worker is redelivered; this
    # count dead-letters it instead of letting it loop forever.
    runs: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Link(Base):
    """One Bitbucket issue <-> one target ticket, within a connection."""

    __tablename__ = "links"
    __table_args__ = (
        UniqueConstraint("connection_id", "bitbucket_repo", "bitbucket_issue_id", name="uq_link_issue"),
        UniqueConstraint("connection_id", "target_id", name="uq_link_target"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    bitbucket_repo: Mapped[str] = mapped_column(String(255))
    bitbucket_issue_id: Mapped[int] = mapped_column(Integer)
    bitbucket_url: Mapped[str | None] = mapped_column(String(512), nullable=True)
    # Empty while the target item is still being created through the outbox (a remote target).
    target_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # The newest Bitbucket `updated_on` applied; older events are stale.
    bitbucket_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class CommentLink(Base):
    __tablename__ = "comment_links"
    __table_args__ = (
        UniqueConstraint("link_id", "bitbucket_comment_id", name="uq_comment_link_bitbucket"),
        UniqueConstraint("link_id", "target_comment_id", name="uq_comment_link_target"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    link_id: Mapped[int] = mapped_column(ForeignKey("links.id", ondelete="CASCADE"))
    bitbucket_comment_id: Mapped[int] = mapped_column(Integer)
    target_comment_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Shadow(Base):
    """The merge base of one field of one link: the pair of values both sides last agreed on.

    Both values are kept, not one, because maps are lossy: the issue may say `duplicate` while
    the ticket says `closed`, and both are "in agreement".
    """

    __tablename__ = "shadows"

    link_id: Mapped[int] = mapped_column(ForeignKey("links.id", ondelete="CASCADE"), primary_key=True)
    field: Mapped[str] = mapped_column(String(32), primary_key=True)
    bitbucket_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    target_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    bitbucket_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    target_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class LedgerEntry(Base):
    """One decision. Append-only: rows are inserted, never updated (conflict resolution adds one)."""

    __tablename__ = "ledger"
    __table_args__ = (Index("ix_ledger_connection_id", "connection_id", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    link_id: Mapped[int | None] = mapped_column(ForeignKey("links.id", ondelete="SET NULL"), nullable=True)
    delivery_id: Mapped[str | None] = mapped_column(String(32), nullable=True, index=True)
    direction: Mapped[str] = mapped_column(String(16))  # forward (Bitbucket -> target) | reverse
    outcome: Mapped[str] = mapped_column(String(16))
    field: Mapped[str | None] = mapped_column(String(32), nullable=True)
    base_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    old_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    new_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    bitbucket_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    target_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    bitbucket_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    target_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    policy: Mapped[str | None] = mapped_column(String(16), nullable=True)
    winner: Mapped[str | None] = mapped_column(String(16), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class OutboxEntry(Base):
    """The outbox: a write waiting to be made to one side, Bitbucket or a remote target.

    Written in the same transaction as the decision or edit that calls for it, so a write is
    never lost between deciding and sending. For Bitbucket, `fields` names what changed (values
    are read when sending, so several quick edits collapse into one write); for a remote target,
    `sent_values` carries the values decided. `sent_values` is committed before the call, so the
    webhook the side fires back is recognised as our echo even if it arrives before we commit
    the result. A side that commits with the ledger (the built-in helpdesk) never has rows here.
    """

    __tablename__ = "outbox"
    __table_args__ = (Index("ix_outbox_link_state", "link_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    link_id: Mapped[int] = mapped_column(ForeignKey("links.id", ondelete="CASCADE"))
    # Which side the write goes to: bitbucket | target (worker.engine.states.OutboxSide).
    side: Mapped[str] = mapped_column(String(16), default="bitbucket", server_default="bitbucket")
    kind: Mapped[str] = mapped_column(String(16))  # fields | comment | create (target only)
    fields: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # The note being copied: to Bitbucket, the target's comment id; to the target, Bitbucket's.
    note_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # pending -> sending -> sent | failed | dismissed
    state: Mapped[str] = mapped_column(String(16), default="pending")
    # While `sending`: the attempt that holds the row until this time is the only one that may
    # make the remote write (worker.sync.claims). Expired or empty: a resumed attempt looks for
    # its marker before writing again.
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)  # host:pid:start
    sent_values: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    unechoed: Mapped[dict | None] = mapped_column(JSON, nullable=True)  # sent values not yet seen back
    # Values Bitbucket held just before our write when they were not the ones we believed: a
    # concurrent Bitbucket edit that our write replaced. Its webhook decides the conflict.
    overwritten: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Escalation(Base):
    """A helpdesk ticket (an item of the connection's target side) being turned into a
    Bitbucket issue: one per ticket and connection."""

    __tablename__ = "escalations"
    __table_args__ = (UniqueConstraint("connection_id", "item_id", name="uq_escalation_item"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    item_id: Mapped[str] = mapped_column(String(64))  # the ticket, as the target side names it
    repo: Mapped[str] = mapped_column(String(255))
    options: Mapped[dict] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default="creating")  # creating | done | failed
    bitbucket_issue_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    uploaded: Mapped[list | None] = mapped_column(JSON, nullable=True)
    # A claim with an expiry: whoever holds it does the remote work; a crashed holder's claim
    # lapses and the next attempt resumes (every step is idempotent through sync markers).
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(200), nullable=True)  # host:pid:start
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class Conflict(Base):
    """A conflict left for a person (policy `manual`), until it is resolved."""

    __tablename__ = "conflicts"
    __table_args__ = (Index("ix_conflicts_connection_state", "connection_id", "state"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    connection_id: Mapped[int] = mapped_column(ForeignKey("connections.id", ondelete="CASCADE"))
    link_id: Mapped[int] = mapped_column(ForeignKey("links.id", ondelete="CASCADE"))
    ledger_id: Mapped[int | None] = mapped_column(ForeignKey("ledger.id", ondelete="SET NULL"), nullable=True)
    field: Mapped[str] = mapped_column(String(32))
    base_bitbucket: Mapped[str | None] = mapped_column(Text, nullable=True)
    base_target: Mapped[str | None] = mapped_column(Text, nullable=True)
    bitbucket_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    target_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    state: Mapped[str] = mapped_column(String(16), default="open")  # open | resolved
    resolution: Mapped[str | None] = mapped_column(String(16), nullable=True)
    resolved_value: Mapped[str | None] = mapped_column(Text, nullable=True)
    resolved_by: Mapped[str | None] = mapped_column(String(255), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)

