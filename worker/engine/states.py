"""The engine's words, one enum each: what a decision came to, who won, where a write or a
delivery stands. StrEnums, so that they are stored, compared and shown as the plain words the
ledger, the API and the database already use."""
from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """What one decision came to (a ledger line's outcome)."""
    APPLIED = "applied"      # a change was made to the other side
    NOOP = "noop"            # nothing to change (already equivalent, kept local, parked...)
    ECHO = "echo"            # our own write seen back
    STALE = "stale"          # older than what is held: no news
    UNMAPPED = "unmapped"    # a value the mapping tables do not carry
    CONFLICT = "conflict"    # both sides changed it
    FAILED = "failed"
    IGNORED = "ignored"      # not ours to sync


class Winner(StrEnum):
    """Who keeps a field that both sides changed, relative to the event being decided."""
    SOURCE = "source"
    DEST = "dest"


class Policy(StrEnum):
    BITBUCKET_WINS = "bitbucket_wins"
    TARGET_WINS = "target_wins"
    LATEST_WINS = "latest_wins"
    MANUAL = "manual"


class Direction(StrEnum):
    FORWARD = "forward"      # Bitbucket -> the target side
    REVERSE = "reverse"      # the target side -> Bitbucket
    SETUP = "setup"          # bbsync configuring Bitbucket for a connection (its webhooks)


class DeliveryStatus(StrEnum):
    """received (stored, 202 sent) -> processed | ignored | held (behind a failed one of its
    issue) | failed (for a person: replay or dismiss) | dismissed."""
    RECEIVED = "received"
    PROCESSED = "processed"
    IGNORED = "ignored"
    HELD = "held"
    FAILED = "failed"
    DISMISSED = "dismissed"


#: Deliveries that stop the later ones of their issue until a person replays or dismisses them.
DELIVERY_STUCK = (DeliveryStatus.FAILED, DeliveryStatus.HELD)


class OutboxState(StrEnum):
    """pending -> sending (claimed, being written) -> sent | failed | dismissed."""
    PENDING = "pending"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    DISMISSED = "dismissed"


#: Rows still to be written (a claim decides who writes a `sending` one).
OUTBOX_OPEN = (OutboxState.PENDING, OutboxState.SENDING)


class OutboxSide(StrEnum):
    """The side an outbox row writes to."""
    BITBUCKET = "bitbucket"
    TARGET = "target"       # a remote target side (one that does not commit with the ledger)


class OutboxKind(StrEnum):
    FIELDS = "fields"       # synced fields of one item, in one write
    COMMENT = "comment"     # one note copied
    CREATE = "create"       # a new item on the target side (its link waits for the id)


class EscalationState(StrEnum):
    """creating (asked for: queued, or being run by the attempt that holds its claim) -> done |
    failed (the tracker was removed, a write was refused, or the retries ran out; asking again
    resumes it where it stopped)."""
    CREATING = "creating"
    DONE = "done"
    FAILED = "failed"


class ConflictState(StrEnum):
    """open (left for a person, policy `manual`) -> resolved."""
    OPEN = "open"
    RESOLVED = "resolved"
