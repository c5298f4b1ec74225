"""One Bitbucket event on a linked item, every field decided at once (worker.engine.decide.
decide_update): what the forward runner carries out. Pure, no database."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from config import mappings
from worker.engine.decide import (Echoed, Expected, FieldDecision, FieldView, Held, Kind, Stale,
                                  decide_update, judge)
from worker.engine.states import Outcome, Policy, Winner

TABLES = mappings.load()
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=timezone.utc)
LATER, EARLIER = T0 + timedelta(minutes=5), T0 - timedelta(minutes=5)


def view(held, current, field="status", policy=Policy.LATEST_WINS, pushable=True) -> FieldView:
    to_dest, to_source = TABLES.translators(field, "bitbucket")
    return FieldView(held=held, current=current, pushable=pushable, policy=policy,
                     to_dest=to_dest, to_source=to_source)


def summary(decisions) -> list[tuple]:
    """(field, what it came to, whether the target is written) per decision, in order."""
    out = []
    for d in decisions:
        if isinstance(d, Echoed):
            out.append((d.field, "echo", False))
        elif isinstance(d, Stale):
            out.append((d.field, "stale", False))
        else:
            out.append((d.field, d.outcome.value + (f"/{d.winner.value}" if d.winner else ""), d.write))
    return out


# (fields of the event, the event's time, views by field, writes of ours in flight, the
#  target's last change) -> the decisions, in field order
WRITE = Expected(7, {"status": "resolved"}, {"status": "solved"})
CASES = {
    "a plain edit of one field, the other unchanged": (
        {"status": "resolved", "priority": "major"}, T0,
        {"status": view(Held("open", "open", EARLIER), "open"),
         "priority": view(Held("major", "normal", EARLIER), "normal", "priority")},
        [], EARLIER,
        [("status", "applied", True)]),
    "our own write seen back decides nothing, its neighbour is news": (
        {"status": "resolved", "priority": "critical"}, T0,
        {"status": view(Held("open", "open", EARLIER), "solved"),
         "priority": view(Held("major", "normal", EARLIER), "normal", "priority")},
        [WRITE], EARLIER,
        [("status", "echo", False), ("priority", "applied", True)]),
    "older than the value held: stale, and the held value again is nothing at all": (
        {"status": "on hold", "priority": "major"}, T0,
        {"status": view(Held("open", "open", LATER), "open"),
         "priority": view(Held("major", "normal", LATER), "normal", "priority")},
        [], EARLIER,
        [("status", "stale", False)]),
    "both sides changed, the helpdesk later: latest wins keeps the helpdesk's": (
        {"status": "resolved"}, T0,
        {"status": view(Held("open", "open", EARLIER), "pending")},
        [], LATER,
        [("status", "conflict/dest", False)]),
    "both sides changed under manual: a conflict for a person, nothing written": (
        {"status": "resolved"}, T0,
        {"status": view(Held("open", "open", EARLIER), "pending", policy=Policy.MANUAL)},
        [], LATER,
        [("status", "conflict", False)]),
    "a value the tables do not carry": (
        {"status": "not-a-status"}, T0,
        {"status": view(Held("open", "open", EARLIER), "open")},
        [], EARLIER,
        [("status", "unmapped", False)]),
    "a field the event does not carry decides nothing": (
        {"status": "resolved"}, T0,
        {"status": view(Held("open", "open", EARLIER), "open"),
         "title": view(Held("Old", "Old", EARLIER), "Old", "title")},
        [], EARLIER,
        [("status", "applied", True)]),
    "first sight of a field on a known link: the value is applied": (
        {"title": "Crash on save"}, T0,
        {"title": view(None, "(untitled)", "title")},
        [], EARLIER,
        [("title", "applied", True)]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_an_event_is_decided_field_by_field(name):
    fields, event_at, views, expected, target_at, want = CASES[name]
    assert summary(decide_update(fields, event_at, views, expected, target_at)) == want


def test_an_echo_carries_what_the_runner_needs_and_a_stale_value_its_time():
    views = {"status": view(Held("open", "open", EARLIER), "pending"),
             "priority": view(Held("major", "normal", LATER), "normal", "priority")}
    echo, stale = decide_update({"status": "resolved", "priority": "minor"}, T0, views, [WRITE], None)
    assert echo == Echoed("status", "resolved", judge(
        "status", "resolved", expected=[WRITE], held=views["status"].held, event_at=T0,
        current_target="pending", pushable=True))
    assert echo.verdict.ticket_moved and echo.verdict.written_from == "solved"
    assert stale == Stale("priority", "minor", LATER)


def test_a_conflict_won_by_bitbucket_writes_and_names_the_winner():
    views = {"status": view(Held("open", "open", EARLIER), "pending", policy=Policy.BITBUCKET_WINS)}
    (d,) = decide_update({"status": "resolved"}, T0, views, [], LATER)
    assert isinstance(d, FieldDecision)
    assert (d.outcome, d.winner, d.write, d.new_dest) == (Outcome.CONFLICT, Winner.SOURCE, True, "solved")


FIELDS = ["status", "priority", "title"]
VALUES = {"status": ["open", "resolved", "on hold", "closed"], "priority": ["major", "minor", "critical"],
          "title": ["A", "B"]}
TIMES = st.one_of(st.none(), st.sampled_from([EARLIER, T0, LATER]))


@st.composite
def events(draw):
    views, fields = {}, {}
    for f in FIELDS:
        values = st.sampled_from(VALUES[f])
        if draw(st.booleans()):
            fields[f] = draw(values)
        held = draw(st.one_of(st.none(), st.builds(Held, values, values, TIMES)))
        views[f] = view(held, draw(values), f, policy=draw(st.sampled_from(list(Policy))))
    writes = draw(st.lists(st.builds(lambda i, v: Expected(i, {"status": v}, {"status": "solved"}),
                                     st.integers(1, 9), st.sampled_from(VALUES["status"])), max_size=2))
    return fields, draw(TIMES), views, writes, draw(TIMES)


@settings(database=None, max_examples=300)
@given(events())
def test_an_event_is_the_sum_of_its_fields(event):
    """Deciding the whole event is deciding each field alone: no field's decision depends on
    another's, so the runner may carry them out in any grouping."""
    fields, event_at, views, writes, target_at = event
    whole = decide_update(fields, event_at, views, writes, target_at)
    alone = [d for f in views for d in decide_update({f: fields[f]} if f in fields else {}, event_at,
                                                        {f: views[f]}, writes, target_at)]
    assert whole == alone
    for d in whole:
        assert d.field in fields
        verdict = judge(d.field, fields[d.field], expected=writes, held=views[d.field].held,
                        event_at=event_at, current_target=views[d.field].current, pushable=True)
        # Our echo never reaches the merge, and a stale value never writes the target.
        assert isinstance(d, Echoed) == (verdict.kind is Kind.ECHO)
        assert isinstance(d, Stale) == (verdict.kind is Kind.STALE)
