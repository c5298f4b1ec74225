"""The per-credential budget: every attempt counted, a rolling hour, slowing before the limit,
and a hard stop when the wait would be too long."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select

from worker.bitbucket.budget import BudgetMeter
from worker.bitbucket.errors import BudgetExhausted
from worker.db.credentials import ApiBudget

from .helpers import REPO

KEY = "api_token:dev@example.com"


@pytest.fixture
def meter(sessions, clock) -> BudgetMeter:
    return BudgetMeter(sessions, clock=clock, sleep=clock.sleep)


def test_every_attempt_is_counted_retries_included(make_client, sim, meter):
    client = make_client(budget=meter)
    client.create_issue(REPO, {"title": "counted"})
    sim.faults.add(status=429, times=2)
    sim.faults.add(status=503, times=1)
    client.get_issue(REPO, 1)
    assert len(sim.request_log) == 5
    assert meter.used(KEY) == 5


def test_the_key_comes_from_the_auth_or_is_required(make_client, meter):
    import httpx2
    from worker.bitbucket.client import BitbucketClient
    assert make_client(budget=meter)._credential_key == KEY
    with pytest.raises(ValueError, match="credential_key"):
        BitbucketClient("http://bbsim.test/2.0", httpx2.Auth(), budget=meter)


def test_used_is_the_count_over_a_rolling_hour(meter, clock):
    for _ in range(5):
        meter.acquire(KEY)
    clock.advance(30 * 60)
    for _ in range(3):
        meter.acquire(KEY)
    assert meter.used(KEY) == 8
    clock.advance(31 * 60)             # the first five are more than an hour old
    assert meter.used(KEY) == 3
    assert meter.used("oauth:someone-else") == 0
    clock.advance(30 * 60)
    assert meter.used(KEY) == 0


def test_old_buckets_are_pruned(meter, sessions, clock):
    meter.acquire(KEY)
    clock.advance(2 * 3600)
    meter.acquire(KEY)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(ApiBudget)) == 1


def test_processes_share_one_budget(sessions, clock):
    first = BudgetMeter(sessions, clock=clock, sleep=clock.sleep)
    second = BudgetMeter(sessions, clock=clock, sleep=clock.sleep)
    first.acquire(KEY)
    second.acquire(KEY)
    second.acquire(KEY)
    assert first.used(KEY) == 3


def test_calls_slow_down_after_the_soft_limit_and_never_pass_the_limit(sessions, clock):
    meter = BudgetMeter(sessions, limit=10, soft_limit=6, max_wait=7200, clock=clock,
                        sleep=clock.sleep)
    waits = []
    peak = 0
    for _ in range(40):
        before = clock.now
        meter.acquire(KEY)
        waits.append(clock.now - before)
        peak = max(peak, meter.used(KEY))
        clock.advance(1)               # a busy caller: one call a second if allowed
    assert waits[:6] == [0] * 6        # under the soft limit: no wait at all
    # From the soft limit on, the headroom (4) is spread over the time until the oldest
    # bucket leaves the hour: a quarter of the ~3594 s left each.
    assert waits[6] == pytest.approx((3600 - 6) / 4, abs=60)
    assert all(w > 0 for w in waits[6:10])
    assert waits[10] == 0              # the first minute's calls left the window
    assert peak < 10                   # slowed before the limit, never reaching it


def test_a_wait_longer_than_allowed_raises_budget_exhausted(sessions, clock):
    meter = BudgetMeter(sessions, limit=3, soft_limit=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        meter.acquire(KEY)
    clock.advance(600)
    with pytest.raises(BudgetExhausted) as caught:
        meter.acquire(KEY, max_wait=60)
    err = caught.value
    assert err.key == KEY and err.used == 3
    assert err.retry_after == pytest.approx(3600 - 600, abs=60)
    assert meter.used(KEY) == 3 and clock.sleeps == []       # nothing counted, nothing slept


def test_at_the_limit_a_short_enough_wait_is_taken(sessions, clock):
    meter = BudgetMeter(sessions, limit=3, soft_limit=3, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        meter.acquire(KEY)
    clock.advance(3600 - 30)
    waited = meter.acquire(KEY, max_wait=120)
    assert 0 < waited <= 90 and clock.sleeps == [waited]
    assert meter.used(KEY) == 1


def test_a_spent_budget_stops_the_client_before_the_request(make_client, sim, sessions, clock):
    meter = BudgetMeter(sessions, limit=2, soft_limit=2, clock=clock, sleep=clock.sleep)
    client = make_client(budget=meter, budget_max_wait=5)
    client.create_issue(REPO, {"title": "one"})
    client.get_issue(REPO, 1)
    with pytest.raises(BudgetExhausted):
        client.get_issue(REPO, 1)
    assert len(sim.request_log) == 2


@pytest.mark.parametrize("limit, soft", [(0, 0), (10, 0), (10, 11)])
def test_limits_are_validated(sessions, limit, soft):
    with pytest.raises(ValueError):
        BudgetMeter(sessions, limit=limit, soft_limit=soft)
