"""Promise 1 and 2 for the forward direction: nothing acknowledged is lost, and re-running work
has no second effect."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.conftest import load_fixture

pytestmark = pytest.mark.integration


def test_broker_outage_delays_work_but_loses_nothing(running):
    conn, secret = running.add_connection(["kolaszek/repository-name"])
    # A second web process whose broker is unreachable (nothing listens on port 1).
    running.stack.env, saved = dict(running.stack.env, BROKER_URL="redis://127.0.0.1:1/0"), running.stack.env
    try:
        broken_url = running.stack.start_web(workers=1, threads=2)
    finally:
        running.stack.env = saved
    healthy_url, running.web_url = running.web_url, broken_url
    try:
        started = time.monotonic()
        r = running.deliver(conn, "issue:comment_created", load_fixture("zulip__issue_commented"), secret)
        elapsed = time.monotonic() - started
    finally:
        running.web_url = healthy_url
    assert r.status_code == 202, r.text
    # Bitbucket waits 10 s; the receiver must answer well within that even with no broker.
    assert elapsed < 10, elapsed
    delivery = r.json()["delivery"]
    assert running.scalar("select status from deliveries where id = :i", i=delivery) == "received"

    # The broker is back (the stack's own): the stored delivery is enqueued and processed once.
    out = running.stack.run("deliveries", "requeue")
    assert "enqueued" in out.stdout
    assert running.wait_processed(delivery) == "processed"
    ticket = running.get("/api/tickets", connection=conn).json()["tickets"]
    assert [c["body"] for c in ticket[0]["comments"]] == ["Add comment"]


def test_rerunning_a_processed_delivery_has_no_second_effect(running):
    conn, secret = running.add_connection(["kolaszek/repository-name"])
    r = running.deliver(conn, "issue:comment_created", load_fixture("zulip__issue_commented"), secret)
    delivery = r.json()["delivery"]
    running.wait_processed(delivery)
    ledger_rows = running.scalar("select count(*) from ledger where delivery_id = :i", i=delivery)

    # Run the task again for the same delivery, as a broker redelivery would.
    assert "enqueued 1 of 1" in running.stack.run("deliveries", "enqueue", delivery).stdout
    log = running.stack.log_dir / "worker.log"
    deadline = time.monotonic() + 30
    while f"sync.delivery_skipped delivery={delivery}" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, "the worker never re-ran the task"
        time.sleep(0.1)
    assert running.scalar("select count(*) from ledger where delivery_id = :i", i=delivery) == ledger_rows
    ticket = running.get("/api/tickets", connection=conn).json()["tickets"][0]
    assert len(ticket["comments"]) == 1


@pytest.mark.parametrize("running", ["embedded"], indirect=True)  # its broker is the filesystem
def test_embedded_broker_sets_aside_an_unreadable_message_and_the_worker_goes_on(running):
    """kombu's filesystem transport could hand the worker a message file before its bytes were
    written; decoding the empty payload stopped the worker ("Unrecoverable error"), and every
    later delivery waited forever. worker.queue.embedded_broker writes messages whole and sets
    aside a file that does not decode: here one is put in front of a real delivery."""
    var = Path(running.stack.env["BBSYNC_VAR_DIR"])
    queue = running.stack.env["BBSYNC_QUEUE"]
    bad = f"{0:020d}_half-written.{queue}.msg"
    (var / "broker" / "queue" / bad).write_bytes(b"")
    conn, secret = running.add_connection(["kolaszek/repository-name"])
    r = running.deliver(conn, "issue:comment_created", load_fixture("zulip__issue_commented"), secret)
    assert running.wait_processed(r.json()["delivery"]) == "processed"
    assert (var / "broker" / "rejected" / bad).exists()
    assert running.stack.procs["worker"].poll() is None, "the worker must still be running"
    assert f"broker.message_rejected file={bad}" in (running.stack.log_dir / "worker.log").read_text()
