"""Three-way merge of one field, and the decisions that come out of it.

Terms: the *source* is the side an event came from, the *dest* the side it may be applied to.
The shadow is the pair (source value, dest value) both sides last agreed on; keeping the pair
rather than one value is what makes lossy maps stable: `duplicate` and `closed` agree, so a
ticket that is still `closed` says nothing new about an issue that is `duplicate`.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Callable

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
