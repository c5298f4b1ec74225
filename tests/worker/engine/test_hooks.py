"""The hook judgement, without Bitbucket or a database: which hook is ours, what drifted."""
import pytest

from worker.engine.hooks import SYNCED_EVENTS, assess, hook_uuid, wanted

WANT = wanted("acme", "https://bbsync.example/")
UID = "9f1e0000-1111-4222-8333-444455556666"


def hook(**over):
    base = {"uuid": "{" + UID + "}", "url": "https://bbsync.example/webhooks/bitbucket/acme",
            "description": "bbsync acme", "active": True, "events": list(SYNCED_EVENTS), "secret_set": True}
    return {**base, **over}


def test_wanted_names_the_connection():
    assert (WANT.url, WANT.description, WANT.active) == (
        "https://bbsync.example/webhooks/bitbucket/acme", "bbsync acme", True)
    assert WANT.body()["events"] == ["issue:created", "issue:updated", "issue:comment_created"]


@pytest.mark.parametrize("over, state", [
    ({}, "ok"),
    ({"events": list(reversed(SYNCED_EVENTS))}, "ok"),
    ({"active": False}, "drifted: inactive"),
    ({"url": "https://old.example/x"}, "drifted: url is 'https://old.example/x'"),
    ({"events": ["issue:created"]}, "drifted: events missing issue:updated, issue:comment_created"),
    ({"events": [*SYNCED_EVENTS, "repo:push"]}, "drifted: extra events repo:push"),
    ({"secret_set": False}, "drifted: no secret"),
    ({"description": "renamed", "active": False}, "drifted: inactive; description is 'renamed'"),
])
def test_drift_is_named(over, state):
    assert assess("a/b", [hook(**over)], WANT, UID, secret_current=True).state == state


def test_a_hook_with_an_old_secret_has_drifted():
    assert assess("a/b", [hook()], WANT, UID, secret_current=False).state == \
        "drifted: signs with a rotated-out secret"


def test_hooks_of_others_are_not_ours_even_on_our_url():
    others = [hook(uuid="{11111111-1111-4111-8111-111111111111}", description="made by hand")]
    assert assess("a/b", others, WANT, None, True).state == "missing"


def test_the_recorded_hook_is_kept_and_the_others_of_ours_are_duplicates():
    other = hook(uuid="{22222222-2222-4222-8222-222222222222}")
    result = assess("a/b", [other, hook()], WANT, UID, True)
    assert hook_uuid(result.hook) == UID
    assert [hook_uuid(d) for d in result.duplicates] == ["22222222-2222-4222-8222-222222222222"]
    assert result.state == "drifted: 1 duplicate(s)"


def test_without_a_record_the_first_listed_is_kept():
    first = hook(uuid="{33333333-3333-4333-8333-333333333333}")
    assert hook_uuid(assess("a/b", [first, hook()], WANT, None, True).hook) == \
        "33333333-3333-4333-8333-333333333333"


def test_a_hook_of_ours_we_did_not_record_is_given_our_secret_again():
    """A crash between making a hook and recording it: found by its description, its secret
    is not known to be ours, whatever the record says of another hook."""
    unrecorded = hook(uuid="{44444444-4444-4444-8444-444444444444}")
    assert assess("a/b", [unrecorded], WANT, UID, secret_current=True).state == \
        "drifted: secret not known to be ours"
    assert assess("a/b", [unrecorded], WANT, None, secret_current=False).state == \
        "drifted: secret not known to be ours"
