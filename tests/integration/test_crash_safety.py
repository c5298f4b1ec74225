"""Workers killed mid-event, stopped politely, and a broker that goes away: with Redis and
with RabbitMQ, on PostgreSQL, with real processes. Each broker is reached through a TCP proxy
the test can cut, so an outage never touches the shared server."""
from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from cryptography.fernet import Fernet
from sqlalchemy import text

from tests.conftest import load_fixture
from tests.integration.conftest import (IN_CI, REDIS_URL, Running, _create_database,
                                        _postgres_answers, _redis_answers)
from tests.integration.tcp_proxy import TcpProxy
from worker.db.session import make_engine
from devstack.stack import Stack

pytestmark = pytest.mark.integration

RABBIT_PORT = int(os.environ.get("TEST_RABBITMQ_PORT", "5672"))


def _rabbit_answers() -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", RABBIT_PORT), timeout=2).close()
        return True
    except OSError:
        return False


def _require(broker: str) -> None:
    checks = {"PostgreSQL": _postgres_answers(),
              broker: _redis_answers() if broker == "redis" else _rabbit_answers()}
    missing = [name for name, ok in checks.items() if not ok]
    if missing:
        message = f"{' and '.join(missing)} not answering"
        if IN_CI:
            pytest.fail(f"CI=true: {message}; .ci/run must start them", pytrace=False)
        pytest.skip(message)


@pytest.fixture(scope="module", params=["redis", "rabbitmq"])
def brokered(request, tmp_path_factory):
    _require(request.param)
    upstream = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0]) if request.param == "redis" else RABBIT_PORT
    proxy = TcpProxy(upstream)
    broker_url = (f"redis://127.0.0.1:{proxy.port}/0" if request.param == "redis"
                  else f"amqp://guest:guest@127.0.0.1:{proxy.port}//")
    db_url, drop = _create_database()
    tmp = tmp_path_factory.mktemp(request.param)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env.update(DATABASE_URL=db_url, BROKER_URL=broker_url, BBSYNC_VAR_DIR=str(tmp / "var"),
               BBSYNC_SECRET_KEYS=Fernet.generate_key().decode(),
               BBSYNC_QUEUE=f"bbsync-crash-{uuid.uuid4().hex[:8]}",
               # Short, so that Redis hands a dead worker's task on within the test.
               BBSYNC_VISIBILITY_TIMEOUT="6")
    stack = Stack(env=env, log_dir=tmp)
    stack.run("db", "upgrade")
    stack.start_worker()
    web = stack.start_web(workers=1, threads=4)
    engine = make_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    yield Running(request.param, stack, web, engine), proxy
    stack.close()
    engine.dispose()
    proxy.close()
    drop()


def _worker_log(run: Running) -> str:
    return (run.stack.log_dir / "worker.log").read_text(errors="replace")


def _wait_log(run: Running, needle: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while needle not in _worker_log(run):
        assert time.monotonic() < deadline, f"worker never logged {needle!r}"
        time.sleep(0.05)


def _linked_issue(run: Running) -> tuple[str, str]:
    """A connection whose issue already has a ticket (so the next event locks its link)."""
    conn, secret = run.add_connection(["minicoders/test-webhook"])
    r = run.deliver(conn, "issue:created", load_fixture("kanboard__bitbucket_issue_opened"), secret)
    assert run.wait_processed(r.json()["delivery"]) == "processed"
    return conn, secret


def _lock_link(run: Running, conn: str):
    """Hold the link's row lock, as a slow concurrent event would: the worker blocks mid-event."""
    c = run.engine.connect()
    c.execute(text("select l.id from links l join connections c on c.id = l.connection_id "
                   "where c.name = :n for update of l"), {"n": conn})
    return c


def _effects(run: Running, conn: str, delivery: str) -> tuple[int, int, str]:
    tickets = run.scalar("select count(*) from links l join connections c on c.id = l.connection_id "
                         "where c.name = :n", n=conn)
    entries = run.scalar("select count(*) from ledger where delivery_id = :d", d=delivery)
    status = run.scalar("select status from tickets t join links l on l.target_id = cast(t.id as varchar) "
                        "join connections c on c.id = l.connection_id where c.name = :n", n=conn)
    return tickets, entries, status


def test_worker_killed_mid_event_applies_it_exactly_once_after_redelivery(brokered):
    run, _proxy = brokered
    conn, secret = _linked_issue(run)
    lock = _lock_link(run, conn)
    try:
        r = run.deliver(conn, "issue:updated", load_fixture("kanboard__bitbucket_issue_closed"), secret)
        delivery = r.json()["delivery"]
        _wait_log(run, f"sync.delivery_started delivery={delivery}")
        os.killpg(run.stack.procs["worker"].pid, signal.SIGKILL)  # mid-event, before its commit
        run.stack.procs.pop("worker").wait()
    finally:
        lock.rollback()
        lock.close()
    run.stack.start_worker()
    assert run.wait_processed(delivery, timeout=60) == "processed"
    time.sleep(8)  # past the visibility timeout: any redelivered copy has run by now
    assert _effects(run, conn, delivery) == (1, 2, "closed")  # status + assignee, once each


def test_sigterm_lets_the_worker_finish_its_event(brokered):
    run, _proxy = brokered
    conn, secret = _linked_issue(run)
    lock = _lock_link(run, conn)
    try:
        r = run.deliver(conn, "issue:updated", load_fixture("kanboard__bitbucket_issue_closed"), secret)
        delivery = r.json()["delivery"]
        _wait_log(run, f"sync.delivery_started delivery={delivery}")
        worker = run.stack.procs["worker"]
        os.killpg(worker.pid, signal.SIGTERM)  # warm shutdown: finish what is running
        time.sleep(0.5)
    finally:
        lock.rollback()
        lock.close()
    worker.wait(timeout=30)
    run.stack.procs.pop("worker")
    assert run.scalar("select status from deliveries where id = :d", d=delivery) == "processed"
    assert run.scalar("select runs from deliveries where id = :d", d=delivery) == 1
    run.stack.start_worker()


def test_broker_down_when_a_webhook_arrives_loses_nothing(brokered):
    run, proxy = brokered
    conn, secret = run.add_connection(["kolaszek/repository-name"])
    proxy.cut()
    try:
        started = time.monotonic()
        r = run.deliver(conn, "issue:comment_created", load_fixture("zulip__issue_commented"), secret)
        assert r.status_code == 202 and time.monotonic() - started < 10
        delivery = r.json()["delivery"]
        time.sleep(2)
        assert run.scalar("select status from deliveries where id = :d", d=delivery) == "received"
    finally:
        proxy.restore()
    # The web process publishes it once the broker is back; the worker reconnects and runs it.
    assert run.wait_processed(delivery, timeout=90) == "processed"
    tickets = run.get("/api/tickets", connection=conn).json()["tickets"]
    assert [c["body"] for c in tickets[0]["comments"]] == ["Add comment"]
