"""The three-way merge of one field, in both directions, against the real default tables."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from config import mappings
from config.enums import BITBUCKET, MAPPED_FIELDS, TARGET
from worker.engine.decide import POLICIES, FieldDecision, ShadowPair, decide_field, is_stale

TABLES = mappings.load()
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
EARLIER = T0 - timedelta(minutes=5)


def forward(field: str) -> dict:
    """Mappers for Bitbucket -> helpdesk (source is Bitbucket)."""
    return dict(to_dest=lambda v: TABLES.to_target(field, v),
                to_source=lambda v: TABLES.to_bitbucket(field, v),
                source_name="bitbucket")


def reverse(field: str) -> dict:
    """Mappers for helpdesk -> Bitbucket (source is the helpdesk)."""
    return dict(to_dest=lambda v: TABLES.to_bitbucket(field, v),
                to_source=lambda v: TABLES.to_target(field, v),
                source_name="target")


def identity() -> dict:
    return dict(to_dest=lambda v: v, to_source=lambda v: v)


def fwd(incoming, current, shadow, field="status", **kw) -> FieldDecision | None:
    return decide_field(field, incoming, current, shadow, **forward(field), **kw)


def rev(incoming, current, shadow, field="status", **kw) -> FieldDecision | None:
    return decide_field(field, incoming, current, shadow, **reverse(field), **kw)


# --- the source did not change -------------------------------------------------------------

def test_unchanged_source_value_has_nothing_to_decide():
    assert fwd("open", "open", ShadowPair("open", "open")) is None


def test_unchanged_source_is_nothing_even_when_the_dest_moved_on():
    # The dest's own change is the other direction's news, not this one's.
    assert fwd("open", "solved", ShadowPair("open", "open")) is None


def test_unchanged_null_source_has_nothing_to_decide():
    assert decide_field("assignee", None, "Ann", ShadowPair(None, None), **identity()) is None


# --- first sight --------------------------------------------------------------------------

def test_first_sight_applies_the_mapped_value():
    d = fwd("resolved", None, None)
    assert (d.outcome, d.write, d.new_dest) == ("applied", True, "solved")
    assert d.new_shadow == ShadowPair("resolved", "solved")
    assert d.base is None and d.source_value == "resolved" and d.dest_value is None


def test_first_sight_overwrites_a_differing_dest_because_no_base_says_it_changed():
    d = fwd("open", "new", None)
    assert (d.outcome, d.write, d.new_dest) == ("applied", True, "open")


def test_first_sight_of_an_equivalent_value_agrees_without_writing():
    d = fwd("duplicate", "closed", None)
    assert (d.outcome, d.write) == ("noop", False)
    assert d.new_shadow == ShadowPair("duplicate", "closed")


def test_text_fields_are_copied_as_they_are():
    d = decide_field("title", "Crash on start", None, None, **identity())
    assert (d.outcome, d.write, d.new_dest) == ("applied", True, "Crash on start")


def test_a_source_change_with_an_unchanged_dest_is_applied():
    d = fwd("resolved", "open", ShadowPair("open", "open"))
    assert (d.outcome, d.write, d.new_dest) == ("applied", True, "solved")
    assert d.new_shadow == ShadowPair("resolved", "solved")
    assert d.base == ShadowPair("open", "open")


def test_clearing_a_text_field_is_applied_as_null():
    d = decide_field("assignee", None, "Ann", ShadowPair("Ann", "Ann"), **identity())
    assert (d.outcome, d.write, d.new_dest) == ("applied", True, None)
    assert d.new_shadow == ShadowPair(None, None)


# --- lossy maps are stable ----------------------------------------------------------------

def test_duplicate_maps_to_closed_and_does_not_come_back():
    there = fwd("duplicate", None, None)
    assert (there.new_dest, there.new_shadow) == ("closed", ShadowPair("duplicate", "closed"))
    # The helpdesk's echo (still `closed`) arrives with the shadow seen from its side.
    back = rev("closed", "duplicate", ShadowPair("closed", "duplicate"))
    assert back is None


def test_closed_ticket_against_duplicate_issue_is_a_noop_not_a_write():
    d = rev("closed", "duplicate", None)
    assert (d.outcome, d.write, d.new_dest) == ("noop", False, None)
    assert d.new_shadow == ShadowPair("closed", "duplicate")


def test_closed_ticket_against_duplicate_issue_after_a_dest_change_is_still_a_noop():
    d = rev("closed", "duplicate", ShadowPair("open", "open"))
    assert (d.outcome, d.write) == ("noop", False)


def test_pending_ticket_against_open_issue_is_a_noop():
    d = rev("pending", "open", ShadowPair("open", "open"))
    assert (d.outcome, d.write, d.new_dest) == ("noop", False, None)
    assert d.new_shadow == ShadowPair("pending", "open")


def test_open_issue_against_pending_ticket_is_a_noop():
    d = fwd("open", "pending", ShadowPair("new", "new"))
    assert (d.outcome, d.write) == ("noop", False)
    assert d.new_shadow == ShadowPair("open", "pending")


def test_minor_and_trivial_both_agree_with_low():
    assert fwd("trivial", "low", ShadowPair("minor", "low"), field="priority").outcome == "noop"
    assert rev("low", "trivial", ShadowPair("normal", "major"), field="priority").outcome == "noop"


def test_incident_ticket_agrees_with_bug_issue():
    d = rev("incident", "bug", ShadowPair("problem", "bug"), field="type")
    assert (d.outcome, d.write) == ("noop", False)


@pytest.mark.parametrize("field", MAPPED_FIELDS)
@pytest.mark.parametrize("side", ["bitbucket", "target"])
def test_every_value_round_trips_without_a_write(field, side):
    values = BITBUCKET[field] if side == "bitbucket" else TARGET[field]
    for value in values:
        if side == "bitbucket":
            there = fwd(value, None, None, field=field)
            assert there.write and there.new_dest == TABLES.to_target(field, value)
            t = there.new_dest
            # Back from the helpdesk, with and without the shadow the first trip left.
            assert rev(t, value, ShadowPair(t, value), field=field) is None, value
            without = rev(t, value, None, field=field)
            assert (without.outcome, without.write) == ("noop", False), value
            # And Bitbucket's own echo of the unchanged value is nothing new.
            assert fwd(value, t, there.new_shadow, field=field) is None, value
        else:
            there = rev(value, None, None, field=field)
            assert there.write and there.new_dest == TABLES.to_bitbucket(field, value)
            b = there.new_dest
            assert fwd(b, value, ShadowPair(b, value), field=field) is None, value
            without = fwd(b, value, None, field=field)
            assert (without.outcome, without.write) == ("noop", False), value
            assert rev(value, b, there.new_shadow, field=field) is None, value


# --- unmapped -----------------------------------------------------------------------------

def test_unknown_bitbucket_value_is_unmapped_and_not_written():
    d = fwd("halfway", "open", ShadowPair("open", "open"))
    assert (d.outcome, d.write, d.new_dest, d.new_shadow) == ("unmapped", False, None, None)
    assert "'halfway'" in d.detail and "status" in d.detail


def test_placeholder_enum_from_a_synthetic_payload_is_unmapped():
    d = fwd("new|open|on hold|resolved|duplicate|invalid|wontfix|closed", None, None)
    assert (d.outcome, d.write) == ("unmapped", False)


def test_unknown_helpdesk_value_is_unmapped_in_the_reverse_direction():
    d = rev("escalated", "open", None)
    assert (d.outcome, d.write, d.new_shadow) == ("unmapped", False, None)


def test_unmapped_value_leaves_the_shadow_so_a_later_mapped_value_applies():
    shadow = ShadowPair("open", "open")
    assert fwd("halfway", "open", shadow).new_shadow is None
    d = fwd("resolved", "open", shadow)
    assert (d.outcome, d.new_dest) == ("applied", "solved")


# --- both sides changed ---------------------------------------------------------------------

def test_both_sides_changed_to_the_same_value_is_a_noop():
    d = fwd("resolved", "solved", ShadowPair("open", "open"))
    assert (d.outcome, d.write, d.winner) == ("noop", False, None)
    assert d.new_shadow == ShadowPair("resolved", "solved")


def test_both_sides_changed_to_equivalent_values_is_a_noop():
    d = fwd("wontfix", "closed", ShadowPair("open", "open"))
    assert (d.outcome, d.write) == ("noop", False)
    assert d.new_shadow == ShadowPair("wontfix", "closed")


CONFLICT = dict(incoming="resolved", current="pending", shadow=ShadowPair("new", "new"))


def conflict(policy: str, **kw) -> FieldDecision:
    return fwd(CONFLICT["incoming"], CONFLICT["current"], CONFLICT["shadow"], policy=policy, **kw)


def test_bitbucket_wins_writes_the_bitbucket_value():
    d = conflict("bitbucket_wins")
    assert (d.outcome, d.policy, d.winner) == ("conflict", "bitbucket_wins", "source")
    assert (d.write, d.new_dest) == (True, "solved")
    assert d.new_shadow == ShadowPair("resolved", "solved")
    assert d.base == ShadowPair("new", "new")
    assert (d.source_value, d.dest_value) == ("resolved", "pending")


def test_bitbucket_wins_in_reverse_keeps_bitbucket():
    d = rev("closed", "resolved", ShadowPair("new", "new"), policy="bitbucket_wins")
    assert (d.outcome, d.winner, d.write) == ("conflict", "dest", False)
    # Bitbucket's kept value goes to the ticket by the forward direction: the shadow holds the
    # helpdesk's value and no agreed Bitbucket value, so any Bitbucket value is a change.
    assert d.new_shadow == ShadowPair("closed", None)


def test_target_wins_keeps_the_helpdesk_value_and_records_what_bitbucket_holds():
    d = conflict("target_wins")
    assert (d.outcome, d.policy, d.winner) == ("conflict", "target_wins", "dest")
    assert (d.write, d.new_dest) == (False, None)
    # The shadow holds Bitbucket's value and no agreed helpdesk value, so whatever the helpdesk
    # holds when the reverse direction runs is a change, and is carried back to Bitbucket.
    assert d.new_shadow == ShadowPair("resolved", None)


def test_target_wins_in_reverse_writes_the_helpdesk_value():
    d = rev("closed", "resolved", ShadowPair("new", "new"), policy="target_wins")
    assert (d.outcome, d.winner, d.write, d.new_dest) == ("conflict", "source", True, "closed")
    assert d.new_shadow == ShadowPair("closed", "closed")


def test_dest_win_is_carried_back_by_the_reverse_direction():
    forward_decision = conflict("target_wins")
    kept = forward_decision.new_shadow or forward_decision.base
    # Reverse sees the shadow from its side: (helpdesk value, Bitbucket value).
    back = rev("pending", "resolved", ShadowPair(kept.dest, kept.source), policy="target_wins")
    # Bitbucket is where the losing side left it: the helpdesk's value is simply written.
    assert (back.outcome, back.write, back.new_dest) == ("applied", True, "open")
    assert back.new_shadow == ShadowPair("pending", "open")


def test_dest_win_followed_by_the_dest_returning_to_the_base_still_converges():
    # Ticket moved new -> open (not yet synced) while the issue moved new -> on hold: the
    # helpdesk wins. Then an agent puts the ticket back to `new` before the reverse sync runs.
    won = fwd("on hold", "open", ShadowPair("new", "new"), policy="target_wins")
    assert (won.winner, won.write) == ("dest", False)
    kept = won.new_shadow or ShadowPair("new", "new")
    back = rev("new", "on hold", ShadowPair(kept.dest, kept.source), policy="target_wins")
    again = fwd("on hold", "new", kept, policy="target_wins")
    decisions = [d for d in (back, again) if d is not None]
    # Issue `on hold`, ticket `new`: one direction must write (or park an open conflict);
    # otherwise the two sides disagree forever with nothing open in the ledger.
    assert any(d.write or (d.outcome == "conflict" and d.winner is None) for d in decisions), (
        f"issue 'on hold' and ticket 'new' stay apart: reverse={back}, forward={again}")


def test_latest_wins_gives_a_newer_source_the_write():
    d = conflict("latest_wins", source_at=T0, dest_at=EARLIER)
    assert (d.winner, d.write, d.new_dest) == ("source", True, "solved")


def test_latest_wins_gives_a_newer_dest_the_field():
    d = conflict("latest_wins", source_at=EARLIER, dest_at=T0)
    assert (d.winner, d.write, d.new_dest) == ("dest", False, None)
    assert d.new_shadow == ShadowPair("resolved", None)


def test_latest_wins_tie_goes_to_the_source():
    d = conflict("latest_wins", source_at=T0, dest_at=T0)
    assert (d.winner, d.write) == ("source", True)


@pytest.mark.parametrize("source_at,dest_at", [(None, T0), (T0, None), (None, None)])
def test_latest_wins_with_an_unknown_time_goes_to_the_source(source_at, dest_at):
    d = conflict("latest_wins", source_at=source_at, dest_at=dest_at)
    assert (d.winner, d.write, d.new_dest) == ("source", True, "solved")


def test_latest_wins_is_the_default_policy():
    d = fwd("resolved", "pending", ShadowPair("new", "new"), source_at=EARLIER, dest_at=T0)
    assert (d.policy, d.winner) == ("latest_wins", "dest")


def test_manual_parks_the_conflict_without_writing_or_moving_the_shadow():
    d = conflict("manual", source_at=T0, dest_at=EARLIER)
    assert (d.outcome, d.policy, d.winner) == ("conflict", "manual", None)
    assert (d.write, d.new_dest, d.new_shadow) == (False, None, None)
    assert "person" in d.detail


def test_manual_conflict_stays_open_in_the_reverse_direction_too():
    d = rev("pending", "resolved", ShadowPair("new", "new"), policy="manual")
    assert (d.outcome, d.winner, d.write, d.new_shadow) == ("conflict", None, False, None)


def test_a_dest_that_returned_to_the_base_is_not_a_conflict():
    d = fwd("resolved", "new", ShadowPair("new", "new"), policy="manual")
    assert (d.outcome, d.write) == ("applied", True)


# --- stale events -------------------------------------------------------------------------

def test_event_older_than_what_was_applied_is_stale():
    assert is_stale(EARLIER, T0)


def test_event_as_new_as_what_was_applied_is_not_stale():
    assert not is_stale(T0, T0)


def test_newer_event_is_not_stale():
    assert not is_stale(T0, EARLIER)


@pytest.mark.parametrize("event_at,applied_at", [(None, T0), (T0, None), (None, None)])
def test_unknown_times_are_never_stale(event_at, applied_at):
    assert not is_stale(event_at, applied_at)


# --- properties ---------------------------------------------------------------------------

STATUS_ANY = st.one_of(st.none(), st.sampled_from(BITBUCKET["status"] + TARGET["status"]),
                       st.text(max_size=8))
TIMES = st.one_of(st.none(), st.datetimes(timezones=st.just(timezone.utc)))


@settings(database=None, max_examples=200)
@given(field=st.sampled_from(MAPPED_FIELDS), direction=st.sampled_from(["forward", "reverse"]),
       incoming=STATUS_ANY, current=STATUS_ANY,
       shadow=st.one_of(st.none(), st.builds(ShadowPair, STATUS_ANY, STATUS_ANY)),
       policy=st.sampled_from(POLICIES), source_at=TIMES, dest_at=TIMES)
def test_any_input_gives_a_consistent_decision(field, direction, incoming, current, shadow, policy,
                                               source_at, dest_at):
    run = fwd if direction == "forward" else rev
    d = run(incoming, current, shadow, field=field, policy=policy,
            source_at=source_at, dest_at=dest_at)
    if d is None:
        assert shadow is not None and incoming == shadow.source
        return
    assert d.outcome in ("applied", "noop", "unmapped", "conflict")
    if d.outcome in ("noop", "unmapped"):
        assert not d.write and d.new_dest is None
    if d.outcome == "unmapped":
        assert d.new_shadow is None
    if d.write:
        mapper = forward(field) if direction == "forward" else reverse(field)
        assert d.new_dest == mapper["to_dest"](incoming)
        assert d.new_shadow == ShadowPair(incoming, d.new_dest)
    if d.outcome == "conflict":
        assert d.policy == policy and shadow is not None


def _agree(field: str, b: str, t: str) -> bool:
    return TABLES.to_target(field, b) == t or TABLES.to_bitbucket(field, t) == b


EDITS = st.lists(st.tuples(st.sampled_from(["bitbucket", "target", "deliver"]),
                           st.integers(min_value=0, max_value=20)), max_size=12)


@settings(database=None, max_examples=200)
@given(field=st.sampled_from(MAPPED_FIELDS), policy=st.sampled_from(POLICIES), edits=EDITS,
       start=st.integers(min_value=0, max_value=20))
@example(field="status", policy="target_wins", start=0,
         edits=[("bitbucket", 3), ("target", 1), ("deliver", 0), ("target", 0)])
def test_edits_on_both_sides_converge_or_leave_an_open_conflict(field, policy, edits, start):
    """Two sides, one shadow, events delivered late and in any order: no ping-pong, and after
    quiescence the sides agree unless a `manual` conflict is open."""
    b_values, t_values = BITBUCKET[field], TARGET[field]
    b = b_values[start % len(b_values)]
    t = TABLES.to_target(field, b)
    shadow = (b, t)  # (Bitbucket, helpdesk), as stored
    clock = T0
    times = {"bitbucket": clock, "target": clock}
    pending: list[str] = []
    open_conflict = False

    def deliver(side: str) -> None:
        nonlocal b, t, shadow, open_conflict
        if side == "bitbucket":
            d = fwd(b, t, ShadowPair(*shadow), field=field, policy=policy,
                    source_at=times["bitbucket"], dest_at=times["target"])
        else:
            d = rev(t, b, ShadowPair(shadow[1], shadow[0]), field=field, policy=policy,
                    source_at=times["target"], dest_at=times["bitbucket"])
        if d is None:
            return
        open_conflict = d.outcome == "conflict" and d.winner is None
        if d.new_shadow is not None:
            pair = (d.new_shadow.source, d.new_shadow.dest)
            shadow = pair if side == "bitbucket" else (pair[1], pair[0])
        if d.write:
            other = "target" if side == "bitbucket" else "bitbucket"
            if side == "bitbucket":
                t = d.new_dest
            else:
                b = d.new_dest
            # Our write comes back as an event from the other side: it must be an echo.
            echo = (rev(t, b, ShadowPair(shadow[1], shadow[0]), field=field, policy=policy)
                    if other == "target" else
                    fwd(b, t, ShadowPair(*shadow), field=field, policy=policy))
            assert echo is None, (side, d, shadow)

    for action, n in edits:
        clock += timedelta(seconds=1)
        if action == "bitbucket":
            b = b_values[n % len(b_values)]
            times["bitbucket"] = clock
            pending.append("bitbucket")
        elif action == "target":
            t = t_values[n % len(t_values)]
            times["target"] = clock
            pending.append("target")
        elif pending:
            deliver(pending.pop(n % len(pending)))
    while pending:
        deliver(pending.pop(0))
    # A reconciler pass in both directions changes nothing further once settled.
    for side in ("bitbucket", "target", "bitbucket", "target"):
        deliver(side)

    if policy == "manual" and open_conflict:
        return
    assert _agree(field, b, t), (b, t, shadow)
