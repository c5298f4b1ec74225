"""Retries: 429 storms with full-jitter backoff, Retry-After, 5xx, lost connections, and the
rule that a POST which may have happened is not repeated unless the caller says it is safe."""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import httpx2
import pytest

from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.errors import (RETRYABLE, BudgetExhausted, NotFound, RateLimited,
                                     ServerError, TrackerRemoved, Unavailable)
from worker.bitbucket.retry import Backoff, retry_after

from .helpers import API_URL, ISSUES_PATH, REPO, api_calls


@pytest.fixture
def issue(client):
    return client.create_issue(REPO, {"title": "Printer on fire"})


def statuses(sim, since: int = 0) -> list[int]:
    return [r.status for r in sim.request_log[since:]]


def scripted(*steps):
    """A MockTransport answering with `steps` in order: a status, (status, headers) or an
    exception instance to raise. Records every request."""
    seen: list[httpx2.Request] = []
    queue = list(steps)

    def handler(request: httpx2.Request) -> httpx2.Response:
        seen.append(request)
        step = queue.pop(0)
        if isinstance(step, Exception):
            raise step
        status, headers = step if isinstance(step, tuple) else (step, {})
        if status == 429:
            return httpx2.Response(429, text="Rate limit for this resource has been exceeded",
                                   headers=headers)
        return httpx2.Response(status, json={"id": 1, "values": []}, headers=headers)

    return httpx2.MockTransport(handler), seen


# --- 429 ------------------------------------------------------------------------------------

def test_a_429_storm_is_ridden_out_with_growing_jittered_delays(client, sim, issue, clock):
    before = len(sim.request_log)
    sim.faults.add(status=429, times=3)
    assert client.get_issue(REPO, issue["id"])["id"] == issue["id"]
    assert statuses(sim, before) == [429, 429, 429, 200]
    # rng 0.5 of an exponential ceiling 1, 2, 4 s: no Retry-After needed
    assert clock.sleeps == [0.5, 1.0, 2.0]


def test_backoff_is_full_jitter_under_an_exponential_ceiling(make_client, sim, issue, clock):
    draws = iter([0.9, 0.1, 0.7, 1.0])
    client = make_client(rng=lambda: next(draws), backoff=Backoff(base=2.0, cap=10.0))
    sim.faults.add(status=429, times=4)
    client.get_issue(REPO, issue["id"])
    assert clock.sleeps == pytest.approx([0.9 * 2, 0.1 * 4, 0.7 * 8, 1.0 * 10])   # capped at 10


def test_more_429s_than_attempts_raise_rate_limited(make_client, sim, issue, clock):
    client = make_client(max_attempts=4)
    before = len(sim.request_log)
    sim.faults.add(status=429, times=10)
    with pytest.raises(RateLimited) as caught:
        client.get_issue(REPO, issue["id"])
    assert caught.value.status == 429 and caught.value.retry_after is None
    assert "Rate limit" in caught.value.message
    assert statuses(sim, before) == [429] * 4
    assert len(clock.sleeps) == 3


def test_total_retry_time_is_bounded(make_client, sim, issue, clock):
    client = make_client(rng=lambda: 1.0, max_attempts=50, max_retry_seconds=10)
    start = clock.now
    sim.faults.add(status=429, times=50)
    with pytest.raises(RateLimited):
        client.get_issue(REPO, issue["id"])
    assert clock.sleeps == [1.0, 2.0, 4.0]         # the next wait (8 s) would cross 10 s
    assert clock.now - start <= 10


def test_a_429_on_a_post_is_retried_since_nothing_happened(client, sim, issue):
    sim.faults.add(status=429, times=2, method="POST")
    comment = client.create_comment(REPO, issue["id"], "once")
    assert [c["id"] for c in client.iter_comments(REPO, issue["id"])] == [comment["id"]]


def test_retries_are_logged_with_stable_names(client, sim, issue, caplog):
    caplog.set_level(logging.INFO, logger="bbsync.bitbucket")
    sim.faults.add(status=429, times=1)
    client.get_issue(REPO, issue["id"])
    assert (f"bitbucket.retry method=GET path={ISSUES_PATH}/1 status=429 attempt=2 delay=0.50"
            in caplog.messages)


# --- Retry-After (a proxy adds one; Bitbucket does not) ---------------------------------------

def test_retry_after_from_a_proxy_is_honoured(make_client, clock):
    transport, seen = scripted((429, {"Retry-After": "7"}), 200)
    client = make_client(transport=transport)
    assert client.get_issue(REPO, 1) == {"id": 1, "values": []}
    assert clock.sleeps == [7.0] and len(seen) == 2


def test_retry_after_as_an_http_date_is_honoured(make_client, clock):
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    transport, _ = scripted((503, {"Retry-After": format_datetime(when, usegmt=True)}), 200)
    client = make_client(transport=transport)
    client.get_issue(REPO, 1)
    assert 25 <= clock.sleeps[0] <= 31


def test_a_retry_after_beyond_the_time_bound_gives_up_at_once(make_client, clock):
    transport, seen = scripted((429, {"Retry-After": "120"}), 200)
    client = make_client(transport=transport, max_retry_seconds=60)
    with pytest.raises(RateLimited) as caught:
        client.get_issue(REPO, 1)
    assert caught.value.retry_after == 120 and clock.sleeps == [] and len(seen) == 1


@pytest.mark.parametrize("header, expected", [("5", 5.0), ("0", 0.0), ("-3", 0.0),
                                              ("soon", None), ("nan", None), ("1.5", 1.5)])
def test_retry_after_parsing(header, expected):
    response = httpx2.Response(429, headers={"Retry-After": header})
    assert retry_after(response) == expected


# --- 5xx and connections ----------------------------------------------------------------------

@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_5xx_on_reads_and_puts_is_retried(client, sim, issue, status):
    sim.faults.add(status=status, times=2)
    assert client.get_issue(REPO, issue["id"])["id"] == issue["id"]
    sim.faults.add(status=status, times=2, method="PUT")
    assert client.update_issue(REPO, issue["id"], {"priority": "major"})["priority"] == "major"


def test_5xx_until_the_end_raises_server_error(make_client, sim, issue):
    client = make_client(max_attempts=3)
    sim.faults.add(status=503, times=5)
    with pytest.raises(ServerError) as caught:
        client.get_issue(REPO, issue["id"])
    assert caught.value.status == 503


def test_a_create_is_not_retried_on_5xx_unless_the_caller_says_it_is_safe(client, sim, issue):
    sim.faults.add(status=500, times=1, method="POST")
    with pytest.raises(ServerError):
        client.create_issue(REPO, {"title": "maybe twice"})
    assert len(api_calls(sim, "POST", "/issues")) == 2          # the fixture's + this one, once
    sim.faults.add(status=502, times=1, method="POST")
    created = client.create_issue(REPO, {"title": "made idempotent"}, retry_unsafe=True)
    assert created["id"] == 2
    assert [i["title"] for i in client.iter_issues(REPO)] == ["Printer on fire", "made idempotent"]


@pytest.mark.parametrize("call", ["create_comment", "post_change", "upload_attachments",
                                  "create_hook"])
def test_every_unsafe_post_fails_fast_on_5xx(client, sim, issue, call):
    calls = {
        "create_comment": lambda: client.create_comment(REPO, 1, "hi"),
        "post_change": lambda: client.post_change(REPO, 1, {"state": "open"}),
        "upload_attachments": lambda: client.upload_attachments(REPO, 1,
                                                                [("a", b"a", "text/plain")]),
        "create_hook": lambda: client.create_hook(REPO, "https://h.example/x", "s",
                                                  ["issue:created"]),
    }
    before = len(sim.request_log)
    sim.faults.add(status=503, times=1, method="POST")
    with pytest.raises(ServerError):
        calls[call]()
    assert statuses(sim, before) == [503]


def test_retried_upload_sends_the_files_again(client, sim, issue):
    sim.faults.add(status=503, times=1, method="POST")
    client.upload_attachments(REPO, 1, [("a.txt", b"abc", "text/plain")], retry_unsafe=True)
    assert sim.read_attachment("acme", "widgets", 1, "a.txt") == (b"abc", "text/plain")


def test_a_refused_connection_is_retried_even_for_a_post(make_client, clock):
    transport, seen = scripted(httpx2.ConnectError("refused"), 201)
    client = make_client(transport=transport)
    assert client.create_comment(REPO, 1, "hi") == {"id": 1, "values": []}
    assert len(seen) == 2 and clock.sleeps == [0.5]


def test_a_read_timeout_on_a_post_is_not_retried(make_client):
    transport, seen = scripted(httpx2.ReadTimeout("slow"), 201)
    client = make_client(transport=transport)
    with pytest.raises(Unavailable) as caught:
        client.create_comment(REPO, 1, "hi")
    assert caught.value.status is None and "ReadTimeout" in caught.value.message
    assert len(seen) == 1


def test_a_read_timeout_on_a_get_is_retried(make_client):
    transport, seen = scripted(httpx2.ReadTimeout("slow"), httpx2.RemoteProtocolError("eof"), 200)
    client = make_client(transport=transport)
    assert client.get_issue(REPO, 1)["id"] == 1 and len(seen) == 3


def test_an_unreachable_bitbucket_is_unavailable_after_the_attempts(make_client):
    transport, seen = scripted(*[httpx2.ConnectError("refused")] * 5)
    client = make_client(transport=transport, max_attempts=5)
    with pytest.raises(Unavailable):
        client.get_issue(REPO, 1)
    assert len(seen) == 5


# --- never retried ----------------------------------------------------------------------------

def test_4xx_other_than_429_is_never_retried(client, sim, issue, clock):
    before = len(sim.request_log)
    with pytest.raises(NotFound):
        client.get_issue(REPO, 99)
    sim.remove_tracker(REPO)
    with pytest.raises(TrackerRemoved):
        client.get_issue(REPO, 1)
    assert statuses(sim, before) == [404, 410] and clock.sleeps == []


def test_the_retryable_tuple_is_what_tasks_retry_on():
    assert set(RETRYABLE) == {RateLimited, ServerError, Unavailable, BudgetExhausted}
    assert not issubclass(TrackerRemoved, RETRYABLE) and not issubclass(NotFound, RETRYABLE)


def test_default_timeouts_are_explicit():
    client = BitbucketClient(API_URL, httpx2.Auth())
    try:
        assert client._http.timeout == httpx2.Timeout(10, connect=5)
        assert str(client._http.base_url) == API_URL + "/"
    finally:
        client.close()
