"""Failing cases the model test found, replayed step by step: each stays fixed.

Hypothesis keeps what it found in its local database, which a fresh clone (and CI) does not
have; these replays carry the cases with the repository. Each is a list of the model's rules
with their arguments, as hypothesis printed them (shrunk by hand where it gave up), and runs
the same end-of-run checks as the model test.
"""
from __future__ import annotations

import random

import pytest

from tests.worker.sync.test_model import SyncModel


class Drawn:
    """Stands in for hypothesis' `data()`: returns the value the failing run drew."""

    def __init__(self, value):
        self.value = value

    def draw(self, _strategy):
        return self.value


CASES = {
    # The helpdesk wins a conflict (its edit is newer) and keeps its value; then an agent puts
    # the old value back before the push. The shadow still held the old base on both sides, so
    # the push saw no change and Bitbucket kept the edit that lost. Found by the fast profile.
    "helpdesk wins a conflict, then returns to the old value": [
        ("setup", dict(n_issues=2)),
        ("developer_edits", dict(data=Drawn("minor"), field="priority", i=0)),
        ("agent_edits", dict(data=Drawn("urgent"), field="priority", i=1)),
        ("developer_edits", dict(data=Drawn("on hold"), field="status", i=1)),
        ("developer_edits", dict(data=Drawn("minor"), field="priority", i=1)),
        ("webhooks_arrive", dict(seed=176, duplicate=True)),
        ("agent_edits", dict(data=Drawn("normal"), field="priority", i=1)),
    ],
    # A write reaches Bitbucket and the worker dies before recording it; the ticket moves on
    # and the next push dies after planning. The write's echo then set the shadow to what was
    # written while the ticket held something newer, and nothing carried the ticket's value
    # out: the sides disagreed for good. Found by the long profile (seed
    # 181599605184004043154754848769198384590), shrunk by hand.
    "echo of an unrecorded write after the ticket moved on": [
        ("setup", dict(n_issues=2)),
        ("agent_edits", dict(data=Drawn("urgent"), field="priority", i=1)),
        ("worker_pushes", dict(crash="after_send")),
        ("agent_edits", dict(data=Drawn("normal"), field="priority", i=1)),
        ("time_passes", dict()),
        ("worker_pushes", dict(crash="after_plan")),
    ],
    # A write sent twice (the first worker died before recording it) comes back as two echoes;
    # the second, older than the recorded write and carrying the same value, left no ledger
    # trace. Found by the long profile.
    "second echo of a write made twice": [
        ("setup", dict(n_issues=1)),
        ("agent_edits", dict(data=Drawn("urgent"), field="priority", i=0)),
        ("worker_pushes", dict(crash="after_send")),
        ("time_passes", dict()),
        ("worker_pushes", dict(crash="none")),
        ("agent_edits", dict(data=Drawn("low"), field="priority", i=0)),
        ("worker_pushes", dict(crash="after_send")),
    ],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_replay(name):
    random.seed(0)
    model = SyncModel()
    try:
        for rule, kwargs in CASES[name]:
            getattr(model, rule)(**kwargs)
    finally:
        model.teardown()
