"""Claims: who may make a remote write that must not happen twice.

A comment post, an issue create: repeating one makes a second comment, a second issue. The row
that asks for such a write (an outbox row, an escalation) is claimed by one attempt for
`CLAIM`, in a short transaction, before the call; the call runs with no transaction open, so a
slow Bitbucket never blocks anyone. Another attempt that finds the claim live leaves the row
to its holder; one that finds it expired (the holder died, or gave it back after an error)
takes it over and looks for the write's marker before making it again.

`CLAIM` must outlast the slowest call the client can make (its retries, its budget wait and
its timeouts included): a claim that lapsed while its holder's call was still in flight would
let a second attempt write beside it. A test holds it to the client's bound.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from worker.db.models import utcnow

CLAIM = timedelta(minutes=10)


class Lost(TimeoutError):
    """This attempt's claim lapsed and another attempt took it over: the write is theirs."""


def until(now: datetime | None = None) -> datetime:
    """The expiry of a claim taken now."""
    return (now or utcnow()) + CLAIM


def is_live(claimed_until: datetime | None, now: datetime | None = None) -> bool:
    return claimed_until is not None and claimed_until > (now or utcnow())
