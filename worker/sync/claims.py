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

A claim also names its holder (`holder()`: host, process id, and the process's start time, so
that a reused process id is not mistaken for the holder). A worker killed mid-write would
otherwise keep its rows for the whole `CLAIM`; any process on the same host can see that the
holder is gone and take the claim over at once (`holder_gone`). On another host nothing can be
told, and the claim lapses as before.
"""
from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta

from worker.db.models import utcnow

CLAIM = timedelta(minutes=10)


class Lost(TimeoutError):
    """This attempt's claim lapsed and another attempt took it over: the write is theirs."""


class Held(TimeoutError):
    """Another attempt holds a live claim on the row: try again later (it may be done by then)."""


def until(now: datetime | None = None) -> datetime:
    """The expiry of a claim taken now."""
    return (now or utcnow()) + CLAIM


def is_live(claimed_until: datetime | None, now: datetime | None = None) -> bool:
    return claimed_until is not None and claimed_until > (now or utcnow())


def holder() -> str:
    """This process, as a claim names it."""
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_started(pid)}"


def holder_gone(claimed_by: str | None) -> bool:
    """Whether the process that took a claim is known to be dead (only a process of this host
    can be known so; an unknown or unnamed holder counts as alive)."""
    if not claimed_by:
        return False
    host, pid, started = _parse(claimed_by)
    if host != socket.gethostname() or pid is None:
        return False
    return _started(pid) != started


def _parse(claimed_by: str) -> tuple[str, int | None, str]:
    host, _, rest = claimed_by.rpartition(":")
    host, _, pid = host.rpartition(":")
    try:
        return host, int(pid), rest
    except ValueError:
        return host, None, rest


def _started(pid: int) -> str:
    """When the process started (clock ticks since boot, from /proc), or "gone"; where there is
    no /proc, only whether it is alive ("alive")."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            # Field 22 is the start time; the command name (field 2) may hold spaces, so count
            # from the closing parenthesis.
            return f.read().rpartition(b")")[2].split()[19].decode()
    except FileNotFoundError:
        return "gone" if os.path.isdir("/proc") else _alive(pid)
    except (OSError, IndexError):
        return _alive(pid)


def _alive(pid: int) -> str:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass
    return "alive"
