"""Typed errors: the status map, readable messages, and pickling (Celery ships them)."""
from __future__ import annotations

import pickle

import pytest

from worker.bitbucket.errors import (AuthFailed, BadRequest, BitbucketError, BudgetExhausted,
                                     Conflict, NotFound, RateLimited, ServerError,
                                     TrackerRemoved, error_class)


@pytest.mark.parametrize("status, cls", [
    (400, BadRequest), (401, AuthFailed), (403, AuthFailed), (404, NotFound), (409, Conflict),
    (410, TrackerRemoved), (429, RateLimited), (500, ServerError), (503, ServerError),
    (418, BitbucketError)])
def test_each_status_has_its_error(status, cls):
    assert error_class(status) is cls


def test_errors_read_well_and_survive_pickling():
    err = BadRequest("Bad request", status=400, fields={"title": ["required"]}, method="POST",
                     path="/2.0/repositories/acme/widgets/issues")
    assert str(err) == ("Bad request fields: title: required "
                        "[400 POST /2.0/repositories/acme/widgets/issues]")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is BadRequest and back.fields == {"title": ["required"]}
    assert back.status == 400 and str(back) == str(err)


def test_budget_exhausted_pickles_with_its_context():
    err = BudgetExhausted("spent", key="api_token:a@b.c", used=1000, retry_after=42.0)
    back = pickle.loads(pickle.dumps(err))
    assert (back.key, back.used, back.retry_after) == ("api_token:a@b.c", 1000, 42.0)
