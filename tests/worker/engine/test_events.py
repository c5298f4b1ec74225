"""Normalizing Bitbucket webhook payloads: every captured fixture, and hostile input."""
from __future__ import annotations

import copy
import json
from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import fixture_json
from worker.engine.events import (ISSUE_EVENTS, MAX_ID, MISSING, SYNCED_FIELDS, MalformedEvent,
                                  issue_key, normalize, parse_time, quick_check)

EVENT_KEYS = {
    "kanboard__bitbucket_issue_opened": "issue:created",
    "kanboard__bitbucket_issue_closed": "issue:updated",
    "kanboard__bitbucket_comment_created": "issue:comment_created",
    "zulip__issue_updated": "issue:updated",
    "zulip__issue_commented": "issue:comment_created",
    "go-playground__issue-created": "issue:created",
    "go-playground__issue-updated": "issue:updated",
    "go-playground__issue-comment-created": "issue:comment_created",
}


def utc(*args) -> datetime:
    return datetime(*args, tzinfo=timezone.utc)


def event(name: str):
    return normalize(EVENT_KEYS[name], fixture_json(name))


def minimal(**issue) -> dict:
    return {"issue": {"id": 7, **issue}, "repository": {"full_name": "acme/widgets"}}


# --- captured fixtures --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(EVENT_KEYS))
def test_every_fixture_normalizes_and_passes_the_quick_check(name):
    e = event(name)
    assert e.key == EVENT_KEYS[name]
    assert set(e.issue.fields) == set(SYNCED_FIELDS)
    assert quick_check(EVENT_KEYS[name], fixture_json(name)) is None


def test_kanboard_issue_opened():
    e = event("kanboard__bitbucket_issue_opened")
    assert (e.issue.repo, e.issue.issue_id) == ("minicoders/test-webhook", 1)
    assert e.issue.url == "https://bitbucket.org/minicoders/test-webhook/issue/1/my-new-issue"
    assert e.issue.fields == {"title": "My new issue", "description": "**test**", "status": "new",
                              "priority": "major", "type": "bug", "assignee": None}
    assert e.issue.reporter == "Frederic Guillot"
    assert e.actor == "Frederic Guillot"
    assert e.actor_uuid == "{fc59b45a-f68b-4fc1-ad1f-a17d4f17cd2c}"
    assert e.issue.updated_at == utc(2015, 6, 21, 2, 17, 40, 990654)
    assert e.comment is None
    assert e.change_hints == frozenset()


def test_kanboard_issue_closed_carries_the_new_state_and_assignee():
    e = event("kanboard__bitbucket_issue_closed")
    assert e.issue.fields["status"] == "closed"
    assert e.issue.fields["assignee"] == "Frederic Guillot"
    assert e.issue.updated_at == utc(2015, 6, 21, 2, 54, 40, 249466)
    assert e.change_hints == frozenset({"status"})


def test_change_record_with_null_content_is_not_a_comment():
    # issue:updated carries a "comment" that is only Bitbucket's record of the change.
    payload = fixture_json("kanboard__bitbucket_issue_closed")
    assert payload["comment"]["content"]["raw"] is None
    assert normalize("issue:updated", payload).comment is None


def test_zulip_update_change_record_is_not_a_comment():
    e = event("zulip__issue_updated")
    assert e.comment is None
    assert e.change_hints == frozenset({"content"})
    assert e.issue.fields["description"] == "Such a bug more description"


def test_kanboard_comment_is_a_comment():
    e = event("kanboard__bitbucket_comment_created")
    assert e.comment is not None
    assert e.comment.id == 19176252
    assert e.comment.body == "1. step1\n2. step2"
    assert e.comment.author == "Frederic Guillot"
    assert e.comment.created_at == utc(2015, 6, 21, 2, 51, 40, 532529)


def test_zulip_comment_and_newer_user_shape():
    e = event("zulip__issue_commented")
    assert (e.issue.repo, e.issue.issue_id) == ("kolaszek/repository-name", 1)
    assert e.issue.url == "https://bitbucket.org/kolaszek/repository-name/issues/2/bug"
    assert e.issue.fields == {"title": "Bug", "description": "Such a bug more description",
                              "status": "new", "priority": "major", "type": "bug",
                              "assignee": "Tomasz"}
    assert e.issue.reporter == "Tomasz"
    assert (e.actor, e.actor_uuid) == ("Tomasz", "{678ab31f-9f88-4d7a-b343-1bdf9f024917}")
    assert e.issue.updated_at == utc(2016, 7, 4, 19, 16, 59, 37577)
    assert (e.comment.id, e.comment.body, e.comment.author) == (28973596, "Add comment", "Tomasz")


@pytest.mark.parametrize("name", [n for n in EVENT_KEYS if n.startswith("go-playground")])
def test_synthetic_payload_with_placeholder_enums_normalizes(name):
    e = event(name)
    assert (e.issue.repo, e.issue.issue_id) == ("team_name/repo_name", 1)
    assert e.issue.url == "https://api.bitbucket.org/issue_id"
    f = e.issue.fields
    assert f["title"] == "Issue title"
    assert f["description"] == "Issue description"
    # Placeholders pass through as text; the mapping step records them as unmapped.
    assert f["status"] == "new|open|on hold|resolved|duplicate|invalid|wontfix|closed"
    assert f["priority"] == "trivial|minor|major|critical|blocker"
    # `type` there is the placeholder of `kind`, which the payload does not carry.
    assert f["type"] is MISSING
    assert f["assignee"] is MISSING
    assert e.issue.reporter is None
    assert (e.actor, e.actor_uuid) == ("Emma", "{a54f16da-24e9-4d7f-a3a7-b1ba2cd98aa3}")
    assert e.issue.updated_at == utc(2015, 4, 6, 15, 23, 38, 179678)


def test_synthetic_comment_without_a_user_has_no_author():
    e = event("go-playground__issue-comment-created")
    assert (e.comment.id, e.comment.body, e.comment.author) == (17, "Comment text", None)


def test_synthetic_update_keeps_its_comment_and_change_hints():
    e = event("go-playground__issue-updated")
    assert e.comment is not None and e.comment.body == "Comment text"
    assert e.change_hints == frozenset({"status"})


# --- fields present, absent, null ---------------------------------------------------------

def test_absent_fields_are_missing_not_null():
    e = normalize("issue:created", minimal())
    assert all(e.issue.fields[f] is MISSING for f in SYNCED_FIELDS)
    assert e.issue.url is None and e.issue.reporter is None and e.issue.updated_at is None
    assert e.actor is None and e.actor_uuid is None


def test_null_assignee_is_an_unassigned_issue():
    assert normalize("issue:created", minimal(assignee=None)).issue.fields["assignee"] is None


def test_null_description_is_an_empty_description():
    e = normalize("issue:created", minimal(content={"raw": None}))
    assert e.issue.fields["description"] == ""


def test_older_user_shape_falls_back_to_username():
    e = normalize("issue:created", {**minimal(reporter={"username": "fred"}),
                                    "actor": {"nickname": "nick"}})
    assert (e.issue.reporter, e.actor) == ("fred", "nick")


@pytest.mark.parametrize("raw", ["", "yesterday", "2015-06-21T02:17:40", 1434853060, None])
def test_unusable_or_naive_times_are_unknown(raw):
    assert parse_time(raw) is None


def test_z_suffixed_time_is_utc():
    assert parse_time("2024-05-01T12:00:00Z") == utc(2024, 5, 1, 12)


# --- malformed payloads -------------------------------------------------------------------

@pytest.mark.parametrize("payload,message", [
    ({"repository": {"full_name": "a/b"}}, "no issue object"),
    ({"issue": [], "repository": {"full_name": "a/b"}}, "no issue object"),
    ({"issue": {}, "repository": {"full_name": "a/b"}}, "issue.id must be an integer"),
    ({"issue": {"id": "7"}, "repository": {"full_name": "a/b"}}, "issue.id must be an integer"),
    ({"issue": {"id": 7.0}, "repository": {"full_name": "a/b"}}, "issue.id must be an integer"),
    ({"issue": {"id": True}, "repository": {"full_name": "a/b"}}, "issue.id must be an integer"),
    ({"issue": {"id": 7}}, "repository.full_name is missing"),
    ({"issue": {"id": 7}, "repository": "a/b"}, "repository.full_name is missing"),
    ({"issue": {"id": 7}, "repository": {"full_name": 5}}, "repository.full_name is missing"),
    ({"issue": {"id": 7}, "repository": {"full_name": "widgets"}}, "repository.full_name is missing"),
])
def test_payload_that_cannot_describe_an_issue_is_malformed(payload, message):
    with pytest.raises(MalformedEvent, match=message):
        normalize("issue:updated", payload)
    assert message in quick_check("issue:updated", payload)


@pytest.mark.parametrize("comment", [
    None, "hello", [], {}, {"id": 3}, {"id": 3, "content": "hello"},
    {"id": 3, "content": {"raw": None}}, {"id": 3, "content": {"raw": "   \n"}},
    {"id": 3, "content": {"raw": 42}},
])
def test_comment_created_without_a_comment_body_is_malformed(comment):
    payload = {**minimal(), "comment": comment}
    with pytest.raises(MalformedEvent, match="without a comment body"):
        normalize("issue:comment_created", payload)
    assert "without a comment body" in quick_check("issue:comment_created", payload)


@pytest.mark.parametrize("comment_id", [None, "3", 3.5, True])
def test_comment_with_a_body_but_no_integer_id_is_malformed(comment_id):
    payload = {**minimal(), "comment": {"id": comment_id, "content": {"raw": "hi"}}}
    with pytest.raises(MalformedEvent, match="comment.id must be an integer"):
        normalize("issue:comment_created", payload)


@pytest.mark.parametrize("body", [[], None, "issue", 5, 1.5, True])
def test_non_object_body_is_rejected_by_the_quick_check(body):
    assert quick_check("issue:created", body) == "body must be a JSON object"
    assert quick_check("repo:push", body) == "body must be a JSON object"


@pytest.mark.parametrize("body", [[], None, "issue", 5])
def test_non_object_body_is_malformed_not_a_crash(body):
    with pytest.raises(MalformedEvent):
        normalize("issue:created", body)


def test_hostile_types_inside_an_issue_read_as_missing():
    payload = {
        "issue": {"id": 7, "title": ["x"], "content": "text", "state": {"name": "open"},
                  "priority": 3, "kind": None, "links": {"html": "https://x"},
                  "reporter": "fred", "updated_on": 12345},
        "repository": {"full_name": "acme/widgets"},
        "actor": ["not", "a", "user"],
        "changes": ["status"],
    }
    e = normalize("issue:updated", payload)
    assert all(e.issue.fields[f] is MISSING for f in ("title", "description", "status", "priority",
                                                       "type"))
    assert e.issue.url is None and e.issue.reporter is None and e.issue.updated_at is None
    assert e.actor is None and e.actor_uuid is None
    assert e.change_hints == frozenset()


def test_actor_uuid_of_the_wrong_type_is_not_passed_on():
    payload = {**minimal(), "actor": {"display_name": "Eve", "uuid": {"$ne": None}}}
    e = normalize("issue:created", payload)
    assert e.actor == "Eve"
    assert e.actor_uuid is None or isinstance(e.actor_uuid, str)


@pytest.mark.parametrize("issue_id", [0, -1, MAX_ID + 1, 2**63, 10**30])
def test_an_issue_id_postgresql_cannot_hold_is_malformed(issue_id):
    payload = minimal()
    payload["issue"]["id"] = issue_id
    with pytest.raises(MalformedEvent, match=f"issue.id must be an integer from 1 to {MAX_ID}"):
        normalize("issue:created", payload)
    assert "issue.id must be an integer from 1 to 2147483647" in quick_check("issue:created", payload)


@pytest.mark.parametrize("comment_id", [0, -5, MAX_ID + 1, 2**64])
def test_a_comment_id_postgresql_cannot_hold_is_malformed(comment_id):
    payload = {**minimal(), "comment": {"id": comment_id, "content": {"raw": "hi"}}}
    with pytest.raises(MalformedEvent, match="comment.id must be an integer from 1"):
        normalize("issue:comment_created", payload)
    assert "comment.id must be an integer" in quick_check("issue:comment_created", payload)


def test_the_largest_ids_postgresql_holds_are_accepted():
    payload = {"issue": {"id": MAX_ID}, "repository": {"full_name": "acme/widgets"},
               "comment": {"id": MAX_ID, "content": {"raw": "hi"}}}
    assert quick_check("issue:comment_created", payload) is None
    e = normalize("issue:comment_created", payload)
    assert (e.issue.issue_id, e.comment.id) == (MAX_ID, MAX_ID)


# --- text cleaned for storing -------------------------------------------------------------

def _hostile(raw_json: bytes) -> dict:
    """A payload as the worker reads it (stdlib json: lone surrogate escapes pass)."""
    return json.loads(raw_json)


def test_clean_payloads_are_not_touched():
    for name in EVENT_KEYS:
        assert event(name).cleaned == ()
    payload = fixture_json("zulip__issue_commented")
    e = normalize("issue:comment_created", payload)
    assert e.issue.fields["title"] is payload["issue"]["title"]  # the fast path: not even a copy
    assert e.comment.body is payload["comment"]["content"]["raw"]


def test_every_text_of_a_payload_is_cleaned_and_each_change_noted():
    payload = _hostile(rb"""{
      "issue": {"id": 7, "title": "T\u0000itle", "content": {"raw": "de\u0000sc \ud800"},
                "state": "new\u0000", "priority": "ma\u0000jor", "kind": "\udc00bug",
                "assignee": {"display_name": "As\u0000signee"},
                "reporter": {"display_name": "Rep\u0000orter"},
                "links": {"html": {"href": "https://bitbucket.org/a/b/issues/7\u0000"}}},
      "repository": {"full_name": "acme/wid\u0000gets"},
      "actor": {"display_name": "Ac\u0000tor"},
      "comment": {"id": 3, "content": {"raw": "com\u0000ment"}, "user": {"nickname": "Au\u0000thor"}}
    }""")
    e = normalize("issue:comment_created", payload)
    assert e.issue.fields == {"title": "Title", "description": "desc \ufffd", "status": "new",
                              "priority": "major", "type": "\ufffdbug", "assignee": "Assignee"}
    assert (e.issue.repo, e.issue.reporter, e.actor) == ("acme/widgets", "Reporter", "Actor")
    assert e.issue.url == "https://bitbucket.org/a/b/issues/7"
    assert (e.comment.body, e.comment.author) == ("comment", "Author")
    assert e.cleaned == (
        "repository: 1 NUL character removed", "url: 1 NUL character removed",
        "title: 1 NUL character removed",
        "description: 1 NUL character removed; 1 unpaired surrogate replaced with U+FFFD",
        "status: 1 NUL character removed", "priority: 1 NUL character removed",
        "type: 1 unpaired surrogate replaced with U+FFFD", "assignee: 1 NUL character removed",
        "reporter: 1 NUL character removed", "actor: 1 NUL character removed",
        "comment: 1 NUL character removed", "comment author: 1 NUL character removed")
    for text in (*e.issue.fields.values(), e.issue.repo, e.issue.url, e.comment.body):
        text.encode("utf-8")


def test_text_is_cut_to_its_column():
    long = "x" * 65536
    e = normalize("issue:comment_created", {
        **minimal(title=long, content={"raw": long * 16}, assignee={"display_name": long},
                  reporter={"display_name": long},
                  links={"html": {"href": "https://bitbucket.org/" + long}}),
        "actor": {"display_name": long}, "comment": {"id": 3, "content": {"raw": long},
                                                    "user": {"display_name": long}}})
    assert e.issue.fields["title"] == "x" * 254 + "\u2026"
    for name in (e.issue.fields["assignee"], e.issue.reporter, e.actor, e.comment.author):
        assert len(name) == 255 and name.endswith("\u2026")
    assert e.issue.fields["description"] == long * 16 and e.comment.body == long  # text columns
    assert e.issue.url is None  # a cut address would lead nowhere
    assert "title: shortened from 65,536 to 255 characters" in e.cleaned
    assert "url: dropped (65,558 characters, over 512)" in e.cleaned
    assert len(e.cleaned) == 6


def test_a_long_repository_name_is_cut_and_so_matches_no_connection():
    e = normalize("issue:created", {"issue": {"id": 7}, "repository": {"full_name": "a/" + "b" * 300}})
    assert len(e.issue.repo) == 255 and e.issue.repo.endswith("\u2026")


def test_right_to_left_marks_and_emoji_pairs_survive_exactly():
    payload = _hostile('{"issue": {"id": 7, "title": "\u202eevil\u202c \u200f\u05e9\u05dc\u05d5\u05dd", '
                       '"content": {"raw": "\\ud83d\\ude00 \u2067isolate\u2069"}}, '
                       '"repository": {"full_name": "acme/widgets"}}'.encode())
    e = normalize("issue:created", payload)
    assert e.issue.fields["title"] == "\u202eevil\u202c \u200fשלום"
    assert e.issue.fields["description"] == "😀 \u2067isolate\u2069"
    assert e.cleaned == ()


def test_names_and_comments_of_nothing_but_nul():
    payload = {**minimal(assignee={"display_name": "\x00"}), "actor": {"display_name": "\x00\x00"}}
    e = normalize("issue:updated", payload)
    assert e.issue.fields["assignee"] is None and e.actor is None
    blank = {**minimal(), "comment": {"id": 3, "content": {"raw": "\x00 \n\x00"}}}
    assert "without a comment body" in quick_check("issue:comment_created", blank)
    assert normalize("issue:updated", blank).comment is None


def test_the_issue_key_is_storable():
    assert issue_key({"issue": {"id": 7}, "repository": {"full_name": "acme/wid\x00gets"}}) == "acme/widgets#7"


# --- unknown events -----------------------------------------------------------------------

@pytest.mark.parametrize("key", ["repo:push", "pullrequest:created", "issue:deleted", ""])
def test_unknown_event_is_not_judged_by_the_quick_check(key):
    assert quick_check(key, {"anything": True}) is None
    with pytest.raises(MalformedEvent, match="is not an issue event"):
        normalize(key, minimal())


def test_the_synced_events_are_the_three_issue_events():
    assert ISSUE_EVENTS == ("issue:created", "issue:updated", "issue:comment_created")


# --- property -----------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                    lambda inner: st.lists(inner, max_size=2)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=2),
                    max_leaves=6)
ISSUE_KEYS = st.sampled_from(["id", "title", "content", "state", "priority", "kind", "assignee",
                              "reporter", "links", "updated_on"])
USER = st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "display_name": JSON, "nickname": JSON, "username": JSON, "uuid": JSON}))
ISSUE = st.one_of(JSON, st.dictionaries(ISSUE_KEYS, JSON, max_size=5).map(
    lambda d: {"id": 7, **d}), st.dictionaries(ISSUE_KEYS, JSON, max_size=5))
COMMENT = st.one_of(JSON, st.fixed_dictionaries({}, optional={
    "id": st.one_of(st.integers(), JSON), "content": st.one_of(
        JSON, st.fixed_dictionaries({"raw": st.one_of(st.text(max_size=5), JSON)})),
    "user": USER, "created_on": JSON}))
PAYLOAD = st.fixed_dictionaries({}, optional={
    "issue": ISSUE, "actor": USER, "comment": COMMENT, "changes": JSON,
    "repository": st.one_of(JSON, st.fixed_dictionaries({"full_name": st.one_of(
        st.just("acme/widgets"), JSON)}))})


@settings(database=None, max_examples=100)
@given(key=st.sampled_from(ISSUE_EVENTS), payload=PAYLOAD)
def test_any_json_object_is_an_event_or_a_clear_malformed_error(key, payload):
    try:
        e = normalize(key, payload)
    except MalformedEvent as exc:
        assert str(exc)
        assert quick_check(key, payload) == str(exc)
    else:
        assert isinstance(e.issue.issue_id, int) and "/" in e.issue.repo
        assert quick_check(key, payload) is None


@settings(database=None, max_examples=100)
@given(name=st.sampled_from(sorted(EVENT_KEYS)), path=st.lists(st.sampled_from(
    ["issue", "repository", "comment", "actor", "content", "links", "reporter", "assignee"]),
    min_size=1, max_size=2), junk=JSON)
def test_a_fixture_with_any_part_replaced_by_junk_never_crashes(name, path, junk):
    payload = copy.deepcopy(fixture_json(name))
    node = payload
    for part in path[:-1]:
        node = node.get(part) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node[path[-1]] = junk
    try:
        normalize(EVENT_KEYS[name], payload)
    except MalformedEvent:
        pass
