"""The web process's background publisher: batches, order, and parking while the broker fails."""
from __future__ import annotations

import threading
import time

from webhooks.dispatch import Dispatcher, one_at_a_time


class Broker:
    """A publish function that records each batch, and can be held or made to fail."""

    def __init__(self):
        self.batches: list[list] = []
        self.calls = 0
        self.accept: int | None = None  # None: all of a batch; n: only its first n jobs
        self.script: list[int | None] = []  # `accept` for the next calls, in order
        self.hold = threading.Event()
        self.hold.set()
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, jobs) -> int:
        self.entered.set()
        self.hold.wait(5)
        with self._lock:
            self.calls += 1
            accept = self.script.pop(0) if self.script else self.accept
            done = len(jobs) if accept is None else min(accept, len(jobs))
            self.batches.append(list(jobs[:done]))
            return done

    @property
    def published(self) -> list:
        with self._lock:
            return [job for batch in self.batches for job in batch]


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_jobs_that_pile_up_during_a_publish_go_out_together_in_order():
    broker = Broker()
    dispatcher = Dispatcher(broker, batch_interval=0)
    broker.hold.clear()
    dispatcher.enqueue("process_delivery", "d0")
    assert broker.entered.wait(5)  # the thread is inside a publish: the next jobs queue up
    for i in range(1, 6):
        dispatcher.enqueue("process_delivery", f"d{i}")
    broker.hold.set()
    wait_for(lambda: len(broker.published) == 6)
    assert broker.published == [("process_delivery", f"d{i}") for i in range(6)]
    assert [len(b) for b in broker.batches] == [1, 5]


def test_a_batch_is_cut_at_batch_max():
    broker = Broker()
    dispatcher = Dispatcher(broker, batch_max=3, batch_interval=0)
    broker.hold.clear()
    dispatcher.enqueue("push_link", 0)
    assert broker.entered.wait(5)
    for i in range(1, 8):
        dispatcher.enqueue("push_link", i)
    broker.hold.set()
    wait_for(lambda: len(broker.published) == 8)
    assert [len(b) for b in broker.batches] == [1, 3, 3, 1]
    assert [arg for _, arg in broker.published] == list(range(8))


def test_the_batch_interval_gathers_jobs_that_arrive_one_by_one():
    broker = Broker()
    dispatcher = Dispatcher(broker, batch_interval=0.3)
    dispatcher.enqueue("process_delivery", "first")  # idle thread: published at once
    wait_for(lambda: broker.calls == 1)
    for i in range(5):
        dispatcher.enqueue("process_delivery", i)
        time.sleep(0.01)
    wait_for(lambda: len(broker.published) == 6)
    assert [len(b) for b in broker.batches] == [1, 5]


def test_a_broker_failing_mid_batch_parks_the_rest_and_publishes_it_later():
    broker = Broker()
    dispatcher = Dispatcher(broker, batch_interval=0, retry_first=0.1)
    broker.hold.clear()
    dispatcher.enqueue("process_delivery", "a")
    assert broker.entered.wait(5)
    for name in "bcde":
        dispatcher.enqueue("process_delivery", name)
    # "b" and "c" are queued, then the broker goes away for two more tries, then comes back.
    broker.script = [None, 2, 0, 0]
    broker.hold.set()
    wait_for(lambda: len(broker.published) == 5)
    assert broker.batches == [[("process_delivery", "a")],
                              [("process_delivery", "b"), ("process_delivery", "c")], [], [],
                              [("process_delivery", "d"), ("process_delivery", "e")]]


def test_while_parked_new_jobs_wait_for_the_backoff_instead_of_hammering_the_broker():
    broker = Broker()
    broker.accept = 0
    dispatcher = Dispatcher(broker, batch_interval=0, retry_first=0.5, retry_max=0.5)
    dispatcher.enqueue("process_delivery", "x")
    wait_for(lambda: broker.calls == 1)
    started = time.monotonic()
    for i in range(20):  # each would have triggered a retry (and its timeout) straight away
        dispatcher.enqueue("process_delivery", i)
        time.sleep(0.01)
    broker.accept = None
    wait_for(lambda: len(broker.published) == 21)
    assert broker.calls == 2
    assert time.monotonic() - started >= 0.4
    assert broker.batches[-1][0] == ("process_delivery", "x")  # parked jobs keep their place


def test_backoff_doubles_while_the_broker_stays_down():
    broker = Broker()
    broker.accept = 0
    dispatcher = Dispatcher(broker, batch_interval=0, retry_first=0.1, retry_max=10)
    dispatcher.enqueue("process_delivery", "x")
    wait_for(lambda: broker.calls == 4, timeout=5)  # tries at 0, 0.1, 0.3, 0.7 s
    time.sleep(0.5)
    assert broker.calls == 4  # the next one is due at 1.5 s


def test_a_publish_that_raises_parks_its_jobs_and_the_thread_lives_on(caplog):
    broker = Broker()
    raised = []

    def publish(jobs):
        if not raised:
            raised.append(jobs)
            raise KeyError("a bug in a publisher, with a secret in its text")
        return broker(jobs)

    dispatcher = Dispatcher(publish, batch_interval=0, retry_first=0.05, retry_max=0.05)
    dispatcher.enqueue("process_delivery", "x")
    wait_for(lambda: broker.published == [("process_delivery", "x")])
    dispatcher.enqueue("process_delivery", "y")
    wait_for(lambda: broker.published[-1:] == [("process_delivery", "y")])
    assert "webhook.enqueue_raised jobs=1 error=KeyError" in caplog.text
    assert "secret" not in caplog.text


def test_one_at_a_time_stops_at_the_first_job_that_fails():
    sent = []

    def enqueue(task, arg):
        if arg == "bad":
            return False
        sent.append(arg)
        return True

    publish = one_at_a_time(enqueue)
    assert publish([("t", "a"), ("t", "b")]) == 2
    assert publish([("t", "c"), ("t", "bad"), ("t", "d")]) == 1
    assert sent == ["a", "b", "c"]


def test_by_default_jobs_that_follow_a_publish_wait_for_the_next_one_50_ms_after_it(monkeypatch):
    """Under load, a message gathers what arrives within 50 ms of the last publish (issue 14:
    the more deliveries a message carries, the less a worker spends on each); an idle thread
    publishes at once."""
    from webhooks import dispatch
    waits: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:
        if threading.current_thread().name == "bbsync-dispatch":
            waits.append(seconds)
        real_sleep(seconds)
    monkeypatch.setattr(dispatch.time, "sleep", sleep)
    broker = Broker()
    dispatcher = Dispatcher(broker)
    dispatcher.enqueue("process_delivery", "first")
    wait_for(lambda: broker.calls == 1)
    dispatcher.enqueue("process_delivery", "second")
    wait_for(lambda: broker.calls == 2)
    assert waits[0] == 0.0  # the first, on an idle thread: at once
    assert 0.025 < waits[1] <= 0.05  # the second: until 50 ms after the first went out
