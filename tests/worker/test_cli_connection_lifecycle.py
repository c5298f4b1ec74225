"""`bbsync connection pause|resume|remove` with bad input: a clear error, exit 1, nothing
changed; and what pausing does to the worker's run of a delivery (uncounted, left waiting)."""
from __future__ import annotations

import json
import uuid

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from worker.cli import main
from worker.db.models import Connection, Delivery, utcnow
from worker.db.session import transaction
from worker.queue import tasks


def bbsync(*argv: str):
    return CliRunner().invoke(main, list(argv))


@pytest.fixture
def acme(db):
    assert bbsync("connection", "add", "acme", "--repo", "acme/widgets", "--webhook-secret", "s").exit_code == 0


def paused_at():
    with transaction() as session:
        return session.scalar(select(Connection.paused_at))


@pytest.mark.parametrize("argv, says", [
    (("connection", "pause", "nobody"), "no connection named 'nobody'"),
    (("connection", "resume", "nobody"), "no connection named 'nobody'"),
    (("connection", "pause", "acme\x00; drop table connections"), "no connection named"),
    (("connection", "pause", "x" * 100000), "no connection named"),
    (("connection", "remove", "acme"), "run again with --yes"),
    (("connection", "remove", "nobody", "--yes"), "no connection named 'nobody'"),
    (("connection", "remove", "<script>", "--yes"), "no connection named"),
])
def test_bad_input_is_a_clear_error_and_changes_nothing(acme, argv, says):
    result = bbsync(*argv)
    assert result.exit_code == 1 and says in result.output and "Traceback" not in result.output
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(Connection)) == 1
    assert paused_at() is None


def test_pause_twice_keeps_the_first_time_and_resume_clears_it(acme):
    assert bbsync("connection", "pause", "acme").exit_code == 0
    first = paused_at()
    assert first is not None
    assert bbsync("connection", "pause", "acme").exit_code == 0
    assert paused_at() == first
    shown = json.loads(bbsync("connection", "show", "acme").output)
    assert shown["paused_at"] == first.isoformat()


def test_a_paused_connections_delivery_is_left_waiting_and_uncounted(acme):
    assert bbsync("connection", "pause", "acme").exit_code == 0
    delivery_id = uuid.uuid4().hex
    with transaction() as session:
        conn_id = session.scalar(select(Connection.id))
        session.add(Delivery(id=delivery_id, connection_id=conn_id, request_uuid=str(uuid.uuid4()),
                             event_key="issue:created", body="{}", status="received", received_at=utcnow(),
                             issue_key="acme/widgets#1"))
    assert tasks.process_deliveries([delivery_id]) == {delivery_id: "paused"}
    assert tasks.process_deliveries([delivery_id, delivery_id]) == {delivery_id: "paused"}
    with transaction() as session:
        row = session.get(Delivery, delivery_id)
        assert (row.status, row.runs) == ("received", 0)
