"""What an incoming value of one field is, before any merging: our own write coming back (an
echo), news older than what the link holds (stale), or news to decide (worker.engine.merge);
what a Bitbucket comment is (ours seen back, already copied, new); which fields wait for a
person (an open conflict parks them).

Pure: the runner (worker.sync.forward) loads what these functions look at, the writes of ours
still expecting their echo and what the link holds for the field, and carries out the verdict.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Iterable, Mapping

from worker.engine.markers import find_comment_marker
from worker.engine.merge import is_stale


@dataclass(frozen=True)
class Expected:
    """One write of ours whose webhook may still be on its way: per field, the value written
    and the helpdesk value it was written from."""
    outbox_id: int
    values: Mapping[str, Any]
    written_from: Mapping[str, Any]


@dataclass(frozen=True)
class Held:
    """What the link holds for a field: the pair both sides last agreed on, and the time of
    the Bitbucket value (an event older than it is no news for this field)."""
    bitbucket: Any
    target: Any
    bitbucket_at: datetime | None


class Kind(StrEnum):
    ECHO = "echo"
    STALE = "stale"
    NEWS = "news"


@dataclass(frozen=True)
class Verdict:
    kind: Kind
    outbox_id: int | None = None      # echo: the write seen back
    written_from: Any = None          # echo: the helpdesk value that write carried
    move_shadow: bool = False         # echo: both sides now agree on what we wrote
    ticket_moved: bool = False        # echo: the helpdesk holds something newer to send out
    repeated: bool = False            # stale: the very value held (no decision at all)


NEWS = Verdict(Kind.NEWS)


def judge(field: str, incoming: Any, *, expected: Iterable[Expected], held: Held | None,
          event_at: datetime | None, current_target: Any, pushable: bool) -> Verdict:
    """The verdict on `incoming`, Bitbucket's value of `field` in an event from `event_at`.

    An echo is recognised whenever it arrives, even before the write was recorded (the values
    were committed to the outbox before the write was sent), and decides nothing (promise 4).
    It moves the shadow to what was written, unless a newer Bitbucket value is already held;
    and if the helpdesk moved on after the write (`current_target`), and the field is one we
    push (`pushable`), that newer value must go out. Otherwise an event older than the value
    held is stale for this field; else it is news.
    """
    newer_held = held is not None and is_stale(event_at, held.bitbucket_at)
    for write in expected:
        if field in write.values and write.values[field] == incoming:
            written_from = write.written_from.get(field)
            return Verdict(Kind.ECHO, write.outbox_id, written_from, move_shadow=not newer_held,
                           ticket_moved=not newer_held and pushable and current_target != written_from)
    if newer_held:
        return Verdict(Kind.STALE, repeated=incoming == held.bitbucket)
    return NEWS


def late_echoes(fields: Mapping[str, Any], expected: Iterable[Expected]) -> list[tuple[int, str, Any]]:
    """For an event older than what the link holds: the (outbox id, field, value) of our own
    earlier writes it carries. They are echoes too, and must not touch the shadow, which
    already holds something newer."""
    return [(write.outbox_id, field, value) for write in expected
            for field, value in write.values.items() if field in fields and fields[field] == value]


class CommentKind(StrEnum):
    OURS = "ours"      # a helpdesk comment we posted, seen back: an echo
    KNOWN = "known"    # a Bitbucket comment already copied
    NEW = "new"        # a Bitbucket comment to copy, once


def judge_comment(body: str, connection: str, already_copied: bool) -> tuple[CommentKind, int | None]:
    """What a Bitbucket comment is to the connection, and for ours, the helpdesk comment it was
    written from (its marker says so, even when our own record of the post is not committed
    yet, or never will be after a crash)."""
    ours = find_comment_marker(body, connection)
    if ours is not None:
        return CommentKind.OURS, ours
    return (CommentKind.KNOWN if already_copied else CommentKind.NEW), None


def parked(fields: Iterable[str], open_conflicts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(fields to push, fields that wait): a field with an open conflict waits for the person
    who resolves it, whatever else changed."""
    waiting = set(open_conflicts)
    fields = list(fields)
    return [f for f in fields if f not in waiting], [f for f in fields if f in waiting]
