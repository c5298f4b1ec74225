"""Every decision a Bitbucket event leads to, field by field, as pure functions over values.

For each synced field the event carries: is it our own write coming back (an echo: decides
nothing, promise 4), older than what the link holds (stale: no news for that field), or news,
merged three ways against the shadow (applied, already equivalent, unmapped, or a conflict with
its winner by policy). `decide_update` runs them over one event; the runner
(worker.sync.forward) loads what they look at and carries out what they return. The reverse
runner (worker.sync.reverse) merges with the same `decide_field`, the sides swapped.

Terms: the *source* is the side an event came from, the *dest* the side it may be applied to.
The shadow is the pair (source value, dest value) both sides last agreed on; keeping the pair
rather than one value is what makes lossy maps stable: `duplicate` and `closed` agree, so a
ticket that is still `closed` says nothing new about an issue that is `duplicate`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Callable, Iterable, Mapping

from worker.engine.events import MISSING
from worker.engine.states import Outcome, Policy, Winner

POLICIES = tuple(Policy)
DEFAULT_POLICY = Policy.LATEST_WINS

Mapper = Callable[[str | None], str | None]


@dataclass(frozen=True)
class ShadowPair:
    source: str | None
    dest: str | None


@dataclass(frozen=True)
class FieldDecision:
    field: str
    outcome: Outcome  # applied | noop | unmapped | conflict
    write: bool  # whether the dest side must be changed to `new_dest`
    new_dest: str | None
    new_shadow: ShadowPair | None  # None: leave the shadow as it is
    base: ShadowPair | None
    source_value: str | None
    dest_value: str | None
    policy: Policy | None = None
    winner: Winner | None = None  # None with a conflict: manual, nobody yet
    detail: str = ""


def decide_field(
    field: str,
    incoming: str | None,
    current_dest: str | None,
    shadow: ShadowPair | None,
    *,
    to_dest: Mapper,
    to_source: Mapper,
    policy: str = DEFAULT_POLICY,
    source_name: str = "bitbucket",
    source_at: datetime | None = None,
    dest_at: datetime | None = None,
) -> FieldDecision | None:
    """Decide one field. None means the source did not change it: nothing to decide."""
    common = dict(field=field, base=shadow, source_value=incoming, dest_value=current_dest)
    if shadow is not None and incoming == shadow.source:
        return None

    mapped = to_dest(incoming)
    if mapped is None and incoming is not None:
        return FieldDecision(outcome=Outcome.UNMAPPED, write=False, new_dest=None, new_shadow=None,
                             detail=f"{incoming!r} has no mapping for {field}", **common)

    # Already equivalent (either way round, for many-to-one maps): agree without writing.
    if mapped == current_dest or (current_dest is not None and to_source(current_dest) == incoming):
        return FieldDecision(outcome=Outcome.NOOP, write=False, new_dest=None,
                             new_shadow=ShadowPair(incoming, current_dest),
                             detail="already equivalent", **common)

    dest_changed = shadow is not None and current_dest != shadow.dest
    if not dest_changed:
        return FieldDecision(outcome=Outcome.APPLIED, write=True, new_dest=mapped,
                             new_shadow=ShadowPair(incoming, mapped), **common)

    winner = pick_winner(policy, source_name, source_at, dest_at)
    if winner is Winner.SOURCE:
        return FieldDecision(outcome=Outcome.CONFLICT, write=True, new_dest=mapped,
                             new_shadow=ShadowPair(incoming, mapped), policy=policy, winner=winner,
                             detail="both sides changed; source kept", **common)
    if winner is Winner.DEST:
        # The dest keeps its value, which the other direction must carry back to the source.
        # The shadow records what the source now holds, and no agreed dest value (None): any
        # dest value then differs from the base, so the other direction writes it, even one
        # that later returns to the old base value. (Keeping the old base instead would
        # strand exactly that one: neither direction would see a difference, and the source
        # would keep the value that lost.)
        return FieldDecision(outcome=Outcome.CONFLICT, write=False, new_dest=None,
                             new_shadow=ShadowPair(incoming, None), policy=policy, winner=winner,
                             detail="both sides changed; dest kept", **common)
    return FieldDecision(outcome=Outcome.CONFLICT, write=False, new_dest=None, new_shadow=None,
                         policy=policy, winner=None, detail="both sides changed; awaiting a person",
                         **common)


def pick_winner(policy: str, source_name: str, source_at: datetime | None,
                dest_at: datetime | None) -> Winner | None:
    """Who keeps a field both sides changed; None under `manual` (a person decides)."""
    if policy == Policy.MANUAL:
        return None
    if policy in (Policy.BITBUCKET_WINS, Policy.TARGET_WINS):
        favoured = "bitbucket" if policy == Policy.BITBUCKET_WINS else "target"
        return Winner.SOURCE if source_name == favoured else Winner.DEST
    # latest_wins, by each side's own clock; a tie or an unknown time goes to the source,
    # whose event is the newer news.
    if source_at is None or dest_at is None or source_at >= dest_at:
        return Winner.SOURCE
    return Winner.DEST


def is_stale(event_at: datetime | None, applied_at: datetime | None) -> bool:
    """An event older than what the link already holds must not overwrite it."""
    return event_at is not None and applied_at is not None and event_at < applied_at


# --- before the merge: our echo, stale, or news ------------------------------------------------

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


def parked(fields: Iterable[str], open_conflicts: Iterable[str]) -> tuple[list[str], list[str]]:
    """(fields to push, fields that wait): a field with an open conflict waits for the person
    who resolves it, whatever else changed."""
    waiting = set(open_conflicts)
    fields = list(fields)
    return [f for f in fields if f not in waiting], [f for f in fields if f in waiting]


# --- one event, every field ------------------------------------------------------------------

@dataclass(frozen=True)
class FieldView:
    """What the runner knows of one synced field when an event arrives: what the link holds
    (None before anything was agreed), the target's value now, whether bbsync writes the field
    back to Bitbucket, the connection's policy for it and its value maps."""
    held: Held | None
    current: Any
    pushable: bool
    policy: str = DEFAULT_POLICY
    to_dest: Mapper = lambda v: v
    to_source: Mapper = lambda v: v


@dataclass(frozen=True)
class Echoed:
    """Our own write seen back: recorded, and nothing else decided (promise 4)."""
    field: str
    incoming: Any
    verdict: Verdict


@dataclass(frozen=True)
class Stale:
    """Older than the value held for the field: no news, unless it carries the Bitbucket edit
    that our later write replaced (the runner looks that up: a conflict, decided late)."""
    field: str
    incoming: Any
    held_at: datetime | None


Decision = Echoed | Stale | FieldDecision


def decide_update(fields: Mapping[str, Any], event_at: datetime | None, views: Mapping[str, FieldView],
                  expected: Iterable[Expected], target_at: datetime | None) -> list[Decision]:
    """The decisions of one Bitbucket event on a linked item, in the order of `views`: for
    each field the event carries, an echo, a stale value, or the merge's decision (fields it
    did not change, and a stale repeat of the held value, decide nothing and are left out)."""
    expected = list(expected)
    decided: list[Decision] = []
    for field, view in views.items():
        incoming = fields.get(field, MISSING)
        if incoming is MISSING:
            continue
        verdict = judge(field, incoming, expected=expected, held=view.held, event_at=event_at,
                        current_target=view.current, pushable=view.pushable)
        if verdict.kind is Kind.ECHO:
            decided.append(Echoed(field, incoming, verdict))
        elif verdict.kind is Kind.STALE:
            if not verdict.repeated:
                decided.append(Stale(field, incoming, view.held.bitbucket_at))
        else:
            base = ShadowPair(view.held.bitbucket, view.held.target) if view.held else None
            d = decide_field(field, incoming, view.current, base, to_dest=view.to_dest,
                             to_source=view.to_source, policy=view.policy,
                             source_at=event_at, dest_at=target_at)
            if d is not None:
                decided.append(d)
    return decided
