"""The pure verdicts before the merge: echo, stale, news; and the merge's indifference to which
side an event came from. No database."""
from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.engine.decide import NEWS, Expected, Held, Kind, Verdict, judge, late_echoes
from worker.engine.decide import ShadowPair, decide_field
from worker.engine.states import Outcome, Policy, Winner

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
LATER, EARLIER = T0 + timedelta(minutes=5), T0 - timedelta(minutes=5)
WRITE = Expected(7, {"status": "resolved", "priority": "critical"}, {"status": "solved", "priority": "high"})


# (what the event carries, what the link holds, what the helpdesk holds now) -> the verdict
CASES = {
    "our write coming back": (
        dict(incoming="resolved", held=Held("open", "open", EARLIER), event_at=T0, current_target="solved"),
        Verdict(Kind.ECHO, 7, "solved", move_shadow=True)),
    "our write back before anything newer, the helpdesk moved on since": (
        dict(incoming="resolved", held=Held("open", "open", EARLIER), event_at=T0, current_target="pending"),
        Verdict(Kind.ECHO, 7, "solved", move_shadow=True, ticket_moved=True)),
    "our write back after a newer Bitbucket value was applied: the shadow keeps that": (
        dict(incoming="resolved", held=Held("closed", "closed", LATER), event_at=T0, current_target="pending"),
        Verdict(Kind.ECHO, 7, "solved")),
    "our write back with no shadow yet (the link was just made)": (
        dict(incoming="resolved", held=None, event_at=None, current_target="solved"),
        Verdict(Kind.ECHO, 7, "solved", move_shadow=True)),
    "another value, older than the one held": (
        dict(incoming="on hold", held=Held("open", "open", LATER), event_at=T0, current_target="open"),
        Verdict(Kind.STALE)),
    "the held value again, older (a second echo of a write made twice)": (
        dict(incoming="open", held=Held("open", "open", LATER), event_at=T0, current_target="open"),
        Verdict(Kind.STALE, repeated=True)),
    "another value, newer": (
        dict(incoming="on hold", held=Held("open", "open", EARLIER), event_at=T0, current_target="open"),
        NEWS),
    "no time on the event: never stale": (
        dict(incoming="on hold", held=Held("open", "open", LATER), event_at=None, current_target="open"),
        NEWS),
    "first sight of the field": (
        dict(incoming="on hold", held=None, event_at=T0, current_target="open"),
        NEWS),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_verdicts(name):
    given_, want = CASES[name]
    assert judge("status", expected=[WRITE], pushable=True, **given_) == want


def test_a_field_we_do_not_push_never_asks_for_a_push_after_its_echo():
    verdict = judge("status", "resolved", expected=[WRITE], held=None, event_at=T0,
                    current_target="pending", pushable=False)
    assert verdict.kind is Kind.ECHO and not verdict.ticket_moved


def test_the_first_write_expecting_the_value_takes_the_echo():
    older = Expected(3, {"status": "resolved"}, {"status": "solved"})
    verdict = judge("status", "resolved", expected=[older, WRITE], held=None, event_at=T0,
                    current_target="solved", pushable=True)
    assert verdict.outbox_id == 3


def test_late_echoes_name_every_write_the_event_carries():
    older = Expected(3, {"status": "resolved", "title": "Old"}, {})
    found = late_echoes({"status": "resolved", "priority": "minor", "title": "New"}, [older, WRITE])
    assert found == [(3, "status", "resolved"), (7, "status", "resolved")]
    assert late_echoes({}, [WRITE]) == []


# --- one engine, two sides ---------------------------------------------------------------

VALUES = st.sampled_from(["a", "b", "c", "d", None])
TIMES = st.one_of(st.none(), st.sampled_from([EARLIER, T0, LATER]))
SWAP = {Policy.BITBUCKET_WINS: Policy.TARGET_WINS, Policy.TARGET_WINS: Policy.BITBUCKET_WINS,
        Policy.LATEST_WINS: Policy.LATEST_WINS, Policy.MANUAL: Policy.MANUAL}


def _table(pairs):
    return lambda v: None if v is None else pairs.get(v)


@settings(database=None, max_examples=400)
@given(incoming=VALUES, current=VALUES, shadow=st.one_of(st.none(), st.builds(ShadowPair, VALUES, VALUES)),
       policy=st.sampled_from(list(Policy)), source_at=TIMES, dest_at=TIMES,
       there=st.dictionaries(st.sampled_from("abcd"), st.sampled_from("abcd")),
       back=st.dictionaries(st.sampled_from("abcd"), st.sampled_from("abcd")))
def test_a_decision_is_the_same_whichever_side_is_the_source(incoming, current, shadow, policy, source_at,
                                                             dest_at, there, back):
    """The merge knows sources and dests, not Bitbucket and the helpdesk: an event from the
    helpdesk, with the sides' names, tables and policy swapped, is decided exactly as the same
    event from Bitbucket."""
    kwargs = dict(to_dest=_table(there), to_source=_table(back), source_at=source_at, dest_at=dest_at)
    from_bitbucket = decide_field("status", incoming, current, shadow, policy=policy,
                                  source_name="bitbucket", **kwargs)
    from_target = decide_field("status", incoming, current, shadow, policy=SWAP[policy],
                               source_name="target", **kwargs)
    if from_bitbucket is None or from_target is None:
        assert from_bitbucket is from_target is None
        return
    # The same decision; only the policy's name differs, as it names the sides.
    assert from_bitbucket == replace(from_target, policy=from_bitbucket.policy)
    assert (from_bitbucket.policy, from_target.policy) in ((None, None), (policy, SWAP[policy]))


def test_policies_name_sides_and_winners_are_relative_to_the_event():
    kwargs = dict(to_dest=lambda v: v, to_source=lambda v: v)
    both_changed = ("b", "c", ShadowPair("a", "a"))
    for source, policy, winner in [("bitbucket", Policy.BITBUCKET_WINS, Winner.SOURCE),
                                   ("target", Policy.BITBUCKET_WINS, Winner.DEST),
                                   ("target", Policy.TARGET_WINS, Winner.SOURCE),
                                   ("bitbucket", Policy.MANUAL, None)]:
        d = decide_field("status", *both_changed, policy=policy, source_name=source, **kwargs)
        assert (d.outcome, d.winner) == (Outcome.CONFLICT, winner)
        assert d.outcome == "conflict"  # the word stored in the ledger


def test_a_bitbucket_comment_is_ours_known_or_new():
    from worker.engine.comments import CommentKind, judge_comment
    from worker.engine.markers import comment_marker
    ours = f"Deployed.\n\n*Ana, via the helpdesk*\n\n{comment_marker('acme', 12)}"
    assert judge_comment(ours, "acme", already_copied=False) == (CommentKind.OURS, 12)
    assert judge_comment(ours, "acme", already_copied=True) == (CommentKind.OURS, 12)
    # Another connection's marker is not ours: that comment is news here.
    assert judge_comment(ours, "other", already_copied=False) == (CommentKind.NEW, None)
    assert judge_comment("Reproduced.", "acme", already_copied=True) == (CommentKind.KNOWN, None)


def test_a_field_with_an_open_conflict_waits_and_the_rest_go():
    from worker.engine.decide import parked
    assert parked(["status", "priority", "title"], ["priority"]) == (["status", "title"], ["priority"])
    assert parked(["status"], []) == (["status"], [])
