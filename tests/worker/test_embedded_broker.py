"""The embedded broker (worker.queue.embedded_broker): messages appear whole, bad files are set
aside."""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid

import pytest
from kombu import Connection
from kombu.transport import filesystem
from kombu.transport.virtual import Empty

from config.settings import load
from worker.queue import embedded_broker
from worker.queue.celery_app import celery_config

QUEUE = "q"


def _channel(tmp_path, transport=embedded_broker.Transport):
    """A connection and channel laid out as worker.queue.celery_app lays out var/broker."""
    f = {name: tmp_path / "broker" / name for name in ("queue", "processed", "control")}
    for folder in f.values():
        folder.mkdir(parents=True, exist_ok=True)
    conn = Connection("filesystem://", transport=transport, transport_options={
        "data_folder_in": str(f["queue"]), "data_folder_out": str(f["queue"]),
        "processed_folder": str(f["processed"]), "control_folder": str(f["control"]),
        "store_processed": False})
    return conn, conn.default_channel


def test_messages_come_out_whole_and_in_order(tmp_path):
    conn, channel = _channel(tmp_path)
    with conn:
        for n in range(20):
            channel._put(QUEUE, {"n": n, "body": "é" * n})
        assert channel._size(QUEUE) == 20
        got = [channel._get(QUEUE) for _ in range(20)]
        assert got == [{"n": n, "body": "é" * n} for n in range(20)]
        with pytest.raises(Empty):
            channel._get(QUEUE)
    # Nothing is left behind: no staged parts, no taken files, nothing in the system's temp dir.
    leftovers = [p for p in (tmp_path / "broker").rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_message_is_invisible_until_it_is_complete(tmp_path, monkeypatch):
    """kombu's own transport creates the file in the queue folder and then writes it: a
    consumer polling in between took an empty file. Here the file enters the queue by one
    rename, after it was written and closed; a consumer polling just before sees nothing."""
    conn, channel = _channel(tmp_path)
    real_replace = os.replace
    seen_before: list = []

    def replace(src, dst):
        if str(dst).endswith(".msg") and "staging" in str(src):
            with pytest.raises(Empty):
                channel._get(QUEUE)
            seen_before.append(os.path.getsize(src))
        return real_replace(src, dst)

    monkeypatch.setattr(embedded_broker.os, "replace", replace)
    with conn:
        channel._put(QUEUE, {"hello": "world"})
        assert seen_before and seen_before[0] > 0  # the staged file was already whole
        assert channel._get(QUEUE) == {"hello": "world"}


def test_a_consumer_racing_a_producer_loses_nothing(tmp_path):
    """A writer and a reader in two threads, as the web and worker processes are. (Against
    kombu's own transport this reader soon takes a file before its bytes are in: an empty
    payload that fails to decode.)"""
    conn, channel = _channel(tmp_path)
    total = 3000
    got: list = []
    errors: list = []
    done = threading.Event()

    def read():
        while not done.is_set() or channel._size(QUEUE):
            try:
                got.append(channel._get(QUEUE)["n"])
            except Empty:
                continue
            except ValueError as exc:
                errors.append(exc)

    with conn:
        reader = threading.Thread(target=read)
        reader.start()
        # A large payload widens the window between creating a file and filling it.
        for n in range(total):
            channel._put(QUEUE, {"n": n, "pad": "x" * 20_000})
        done.set()
        reader.join(30)
    assert errors == []
    assert got == list(range(total))


def test_a_backlog_is_listed_once_not_once_per_message(tmp_path, monkeypatch):
    conn, channel = _channel(tmp_path)
    listings = []
    real_listdir = os.listdir

    def listdir(path):
        listings.append(path)
        return real_listdir(path)

    with conn:
        for n in range(50):
            channel._put(QUEUE, {"n": n})
        monkeypatch.setattr(embedded_broker.os, "listdir", listdir)
        assert [channel._get(QUEUE)["n"] for _ in range(50)] == list(range(50))
        assert len(listings) == 1
        channel._put(QUEUE, {"n": 50})  # put after the listing ran out: found by the next one
        assert channel._get(QUEUE) == {"n": 50}
        with pytest.raises(Empty):
            channel._get(QUEUE)
        assert len(listings) == 3  # the second found n=50, the third found nothing


def test_two_consumers_share_a_queue_without_losing_or_doubling(tmp_path):
    """Two workers on one var/: a name one of them listed may be gone when it gets to it."""
    conn_a, a = _channel(tmp_path)
    conn_b, b = _channel(tmp_path)
    with conn_a, conn_b:
        for n in range(30):
            a._put(QUEUE, {"n": n})
        got = []
        for turn in range(40):
            with contextlib.suppress(Empty):
                got.append((a if turn % 2 else b)._get(QUEUE)["n"])
    assert sorted(got) == list(range(30))


def test_a_file_that_is_not_a_message_is_set_aside_and_the_queue_goes_on(tmp_path, caplog):
    conn, channel = _channel(tmp_path)
    queue = tmp_path / "broker" / "queue"
    empty, garbage, null = (f"{n:020d}_{what}.{QUEUE}.msg" for n, what in
                            ((1, "empty"), (2, "garbage"), (3, "null")))
    with conn:
        (queue / empty).write_bytes(b"")
        (queue / garbage).write_bytes(b"\xff\xfe not json")
        (queue / null).write_bytes(b"null")  # JSON, but not a message
        channel._put(QUEUE, {"after": True})
        with caplog.at_level(logging.ERROR, logger="bbsync.broker"):
            assert channel._get(QUEUE) == {"after": True}
    rejected = sorted(p.name for p in (tmp_path / "broker" / "rejected").iterdir())
    assert rejected == [empty, garbage, null]
    assert [r.getMessage().split()[1] for r in caplog.records] == [
        f"file={empty}", f"file={garbage}", f"file={null}"]
    assert "not json" not in caplog.text  # the content is never logged


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    conn, channel = _channel(tmp_path)
    queue = tmp_path / "broker" / "queue"
    with conn:
        channel._put(QUEUE, {"n": 0})  # the staging folder exists, beside the queue
        for path in queue.iterdir():
            path.unlink()
        queue.rmdir()  # the rename into the queue now fails, as on a disk gone bad
        with pytest.raises(filesystem.ChannelError):
            channel._put(QUEUE, {"n": 1})
    assert [p for p in (tmp_path / "broker").rglob("*") if p.is_file()] == []


def test_the_embedded_default_uses_this_transport_and_redis_does_not(tmp_path):
    conf = celery_config(load({"BBSYNC_VAR_DIR": str(tmp_path)}))
    assert conf["broker_transport"] == embedded_broker.TRANSPORT
    conn = Connection(conf["broker_url"], transport=conf["broker_transport"],
                      transport_options=conf["broker_transport_options"])
    assert conn.transport_cls is embedded_broker.Transport or \
        conn.get_transport_cls() is embedded_broker.Transport
    redis_conf = celery_config(load({"BBSYNC_VAR_DIR": str(tmp_path),
                                     "REDIS_URL": "redis://127.0.0.1:6379/0"}))
    assert redis_conf["broker_transport"] is None


def test_a_listing_takes_only_messages_named_before_it_began(tmp_path, monkeypatch):
    """A message renamed in while the folder is being listed may be missed by the listing while
    a later one is seen; so a listing keeps only names older than itself, and the later one
    waits for the next listing, after the earlier."""
    conn, channel = _channel(tmp_path)
    with conn:
        channel._put(QUEUE, {"n": 1})
        real_listdir = embedded_broker.os.listdir

        def listdir_missing_the_first(path):
            # What a racing listing can return: the first message missed, a newer one seen.
            names = real_listdir(path)
            channel._put(QUEUE, {"n": 2})
            return [n for n in real_listdir(path) if n not in names]
        monkeypatch.setattr(embedded_broker.os, "listdir", listdir_missing_the_first)
        with pytest.raises(Empty):
            channel._get(QUEUE)  # the newer message is not handed out ahead of the first
        monkeypatch.setattr(embedded_broker.os, "listdir", real_listdir)
        assert [channel._get(QUEUE)["n"], channel._get(QUEUE)["n"]] == [1, 2]


def test_a_message_named_as_kombu_names_them_is_still_taken(tmp_path):
    conn, channel = _channel(tmp_path)
    with conn:
        legacy = tmp_path / "broker" / "queue" / f"1733500000000_{uuid.uuid4()}.{QUEUE}.msg"
        legacy.write_text(json.dumps({"n": "legacy"}))
        assert channel._get(QUEUE) == {"n": "legacy"}


def test_a_message_handed_back_comes_again_marked_redelivered(tmp_path):
    """Celery reads `redelivered` from the delivery_info: a task whose worker was lost must see
    it there, or it would take the message for a first delivery again. (The default exchange
    routes by queue name, so no binding from another test's connection can get in the way.)"""
    conn, channel = _channel(tmp_path)
    with conn:
        conn.Producer(channel).publish({"task": "x"}, exchange="", routing_key=QUEUE)
        first = _get(channel)
        assert first.payload == {"task": "x"} and not first.delivery_info.get("redelivered")
        channel.basic_reject(first.delivery_tag, requeue=True)
        again = _get(channel)
        assert again.payload == {"task": "x"} and again.delivery_info["redelivered"] is True
        channel.basic_ack(again.delivery_tag)


def _get(channel, timeout: float = 5.0):
    """The next message, as a consumer polls for it."""
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = channel.basic_get(QUEUE, no_ack=False)
        if message is not None:
            return message
        time.sleep(0.01)
    raise AssertionError("no message came")
