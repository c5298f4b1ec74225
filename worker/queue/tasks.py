"""Celery tasks: thin. Ids in, the work in worker.sync, an explicit list of what is retried."""
from __future__ import annotations

import logging
import random
from datetime import timedelta

from celery.signals import worker_ready
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, OperationalError

from config.settings import get_settings
from worker.queue import task_names
from worker.queue.celery_app import app, max_task_delay
from worker.bitbucket import errors as bitbucket_errors
from worker.db.models import Connection, Delivery, utcnow
from worker.db.session import transaction
from worker.engine.states import DeliveryStatus
from worker.sync import claims, deliveries, forward, outbox, push, waiting
from worker.sync import escalate as escalation
from worker.targets import side

log = logging.getLogger("bbsync.tasks")

#: Transient by nature: a database blip, a lock timeout, losing a race to create the same link
#: (the unique constraint fires; on retry the link exists), a target side that did not answer or
#: whose item changed under the write (read again, decide again). Anything else is a bug or bad
#: data and must not loop: it is recorded as failed for a person to see and replay.
RETRYABLE = (OperationalError, IntegrityError, side.Unavailable, side.VersionConflict)
MAX_RETRIES = 8
#: How long a stored delivery may wait unqueued before the sweeper enqueues it again.
REQUEUE_AFTER = timedelta(seconds=30)


def _backoff(retries: int) -> float:
    """Exponential backoff with full jitter, capped below the broker's visibility timeout."""
    return random.uniform(0, min(max_task_delay(get_settings()), 2 ** retries))


def _run_delivery(delivery_id: str, started: deliveries.Taken | None = None) -> str:
    """Process one stored delivery, and queue what it released and the push it made due.
    `started`: its run, counted already (process_deliveries counts a message's in one
    statement). RETRYABLE errors propagate (the caller retries); so does anything else (it
    fails)."""
    if started is None:
        with transaction() as session:
            started = deliveries.start_run(session, delivery_id)
    if started is not None and started.paused:
        # Stays `received`, uncounted: `bbsync connection resume` queues it again, in order.
        log.info("sync.delivery_paused delivery=%s", delivery_id)
        return "paused"
    if started is None or started.status != DeliveryStatus.RECEIVED:
        # A redelivery, a sweeper's second enqueue, or an operator's re-run: no second effect.
        log.info("sync.delivery_skipped delivery=%s status=%s", delivery_id,
                 started.status if started else "missing")
        return "skipped"
    log.info("sync.delivery_started delivery=%s run=%d", delivery_id, started.runs)
    try:
        with transaction() as session:
            outcome = forward.process_delivery(session, started)
    except deliveries.AlreadyFinished:
        # Another run finished it while this one worked: this one's effects were rolled back.
        log.info("sync.delivery_skipped delivery=%s status=finished-by-another-run", delivery_id)
        return "skipped"
    for released in outcome.released:
        enqueue_delivery(released)
    if outcome.push_link is not None:
        enqueue("push_link", outcome.push_link)
    return outcome.status


@app.task(bind=True, name=task_names.PROCESS_DELIVERY, max_retries=MAX_RETRIES)
def process_delivery(self, delivery_id: str) -> str:
    try:
        return _run_delivery(delivery_id)
    except RETRYABLE as exc:
        if self.request.retries >= MAX_RETRIES:
            _mark_failed(delivery_id, f"gave up after {MAX_RETRIES} retries: {exc.__class__.__name__}")
            raise
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries))
    except Exception as exc:
        _mark_failed(delivery_id, f"{exc.__class__.__name__}: {exc}")
        raise


@app.task(bind=True, name=task_names.PROCESS_DELIVERIES)
def process_deliveries(self, delivery_ids: list[str]) -> dict[str, str]:
    """Deliveries a web process stored together, in the order they arrived: one message for
    several is what lets the receiver answer fast (a message costs the web process more CPU
    than storing the delivery does). Their runs are counted in one statement, then they are
    applied in one transaction (one commit, one WAL flush for all). If any of them fails,
    that transaction is rolled back whole and each is processed alone, exactly as
    `process_delivery` would: one that must be retried goes on as a task of its own, one that
    fails is recorded, and the rest go on. Nothing is acknowledged before its commit. A
    redelivered batch (its worker died) finds its finished deliveries done; the sweeper queues
    any it cannot reach soon.

    A message the broker hands out for the first time has its runs counted in the transaction
    that applies them (one commit, not two): if its worker dies in it, the count is lost with
    the work, but the message comes again marked redelivered, and is then counted apart first,
    so a delivery that kills its worker is still dead-lettered (one run later)."""
    info = self.request.delivery_info or {}
    tried = bool(info) and not info.get("redelivered")
    if tried:
        together = _run_together(delivery_ids)
        if together is not None:
            return together
    try:  # every run counted in one statement and one commit
        with transaction() as session:
            started = deliveries.start_runs(session, delivery_ids)
    except RETRYABLE as exc:  # e.g. a deadlock with a second copy of this message: one at a time
        log.info("sync.batch_start_retry error=%s", exc.__class__.__name__)
        started = None
    if started is not None and len(delivery_ids) > 1 and not tried:
        together = _run_together(delivery_ids, started)
        if together is not None:
            return together
    outcomes: dict[str, str] = {}
    stopped: set[tuple[int, str | None]] = set()  # issues with a delivery that failed just now
    for delivery_id in delivery_ids:
        taken = started.get(delivery_id) if started is not None else None
        if taken is not None and (taken.connection_id, taken.issue_key) in stopped:
            with transaction() as session:  # read again: it must now wait behind that one
                taken = deliveries.read(session, delivery_id)
        try:
            outcomes[delivery_id] = _run_delivery(delivery_id, taken)
        except RETRYABLE as exc:
            log.info("sync.delivery_retry delivery=%s error=%s", delivery_id, exc.__class__.__name__)
            outcomes[delivery_id] = "retrying" if _retry_alone(delivery_id) else "waiting"
        except Exception as exc:
            _mark_failed(delivery_id, f"{exc.__class__.__name__}: {exc}")
            outcomes[delivery_id] = "failed"
        if outcomes[delivery_id] in (DeliveryStatus.FAILED, DeliveryStatus.HELD) and taken is not None:
            stopped.add((taken.connection_id, taken.issue_key))
    return outcomes


class _TakeApart(Exception):
    """A delivery of the message must wait behind a failed one: one by one, then."""


def _run_together(delivery_ids: list[str],
                  started: dict[str, deliveries.Taken] | None = None) -> dict[str, str] | None:
    """Apply a message's deliveries in one transaction, their runs counted in it unless
    `started` (counted already: then by the statement that marks them done, see
    deliveries.take_runs); None (rolled back, nothing changed) if any of them raised, or was
    not a plain apply (held, failed), for the caller to take them one by one."""
    try:
        with transaction() as session:
            taken = started if started is not None else deliveries.take_runs(session, delivery_ids)
            outcomes = {i: "paused" if i in taken and taken[i].paused else "skipped" for i in delivery_ids
                        if i not in taken or taken[i].status != DeliveryStatus.RECEIVED or taken[i].paused}
            runnable = [taken[i] for i in delivery_ids if i not in outcomes]
            if any(t.behind is not None for t in runnable):
                raise _TakeApart
            done = []
            for t in runnable:
                log.info("sync.delivery_started delivery=%s run=%d", t.id, t.runs)
                done.append(forward.process_delivery(session, t))
    except Exception as exc:  # any: one failing event never takes the others with it
        log.info("sync.batch_split deliveries=%d error=%s", len(delivery_ids), exc.__class__.__name__)
        return None
    for outcome in done:
        outcomes[outcome.delivery_id] = outcome.status
        for released in outcome.released:
            enqueue_delivery(released)
    for link_id in dict.fromkeys(o.push_link for o in done if o.push_link is not None):
        enqueue("push_link", link_id)
    return {i: outcomes[i] for i in delivery_ids}


def _retry_alone(delivery_id: str) -> bool:
    try:
        process_delivery.apply_async(args=[delivery_id], countdown=_backoff(0))
        return True
    except Exception as exc:  # not queued: the row stays `received` for the sweeper
        log.warning("enqueue_failed task=process_delivery arg=%s error=%s", delivery_id,
                    exc.__class__.__name__)
        return False


def _mark_failed(delivery_id: str, reason: str) -> None:
    log.error("sync.delivery_failed delivery=%s reason=%s", delivery_id, reason)
    with transaction() as session:
        delivery = session.get(Delivery, delivery_id)
        if delivery is not None and delivery.status == DeliveryStatus.RECEIVED:
            deliveries.fail(session, delivery, reason)


@app.task(bind=True, name=task_names.PUSH_LINK, max_retries=MAX_RETRIES)
def push_link(self, link_id: int) -> str:
    """Write a link's pending helpdesk edits and comments to Bitbucket."""
    try:
        return push.push_link(link_id)
    except RETRYABLE + bitbucket_errors.RETRYABLE as exc:
        if self.request.retries >= MAX_RETRIES:
            push.give_up(link_id, f"gave up after {MAX_RETRIES} retries: {exc.__class__.__name__}")
            raise
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries))


@app.task(bind=True, name=task_names.ESCALATE, max_retries=MAX_RETRIES)
def escalate(self, escalation_id: int) -> str:
    """Run an escalation a helpdesk agent asked for: the Bitbucket issue, its attachments, the
    ticket's link (worker.sync.escalate). Another attempt holding it, or having taken it over,
    is waited out by retrying later, as are Bitbucket's passing errors; after the last retry,
    or on an error no retry mends, it fails with the reason (unless it is done or held)."""
    try:
        result = escalation.run_escalation(escalation_id)
    except RETRYABLE + bitbucket_errors.RETRYABLE + (claims.Held, claims.Lost) as exc:
        if self.request.retries >= MAX_RETRIES:
            escalation.give_up(escalation_id, f"gave up after {MAX_RETRIES} retries: {escalation.describe(exc)}")
            raise
        raise self.retry(exc=exc, countdown=_backoff(self.request.retries))
    except Exception as exc:
        escalation.give_up(escalation_id, escalation.describe(exc))
        raise
    return "nothing to run" if result is None else f"{result.repo}#{result.issue_id}"


ENQUEUEABLE = {"process_delivery": process_delivery, "push_link": push_link, "escalate": escalate}


def enqueue(task: str, arg: str | int) -> bool:
    """Queue one job. A broker outage is logged, not raised: the work is already stored (a
    delivery row, an outbox row) and is queued again later, so the caller can still answer."""
    try:
        ENQUEUEABLE[task].apply_async(args=[arg])
        return True
    except Exception as exc:  # kombu raises a zoo of connection errors; all mean "not queued"
        log.warning("enqueue_failed task=%s arg=%s error=%s", task, arg, exc.__class__.__name__)
        return False


def enqueue_delivery(delivery_id: str) -> bool:
    return enqueue("process_delivery", delivery_id)


def requeue_pending(older_than: timedelta = REQUEUE_AFTER, connection_id: int | None = None) -> int:
    """Enqueue every stored delivery, outbox push and escalation still waiting after
    `older_than` (of one connection, or of every one not paused), and the pushes a dead
    process of this host was making (its claims are given back). Safe to repeat: a task finds
    finished work done, or held by another, and does nothing."""
    cutoff = utcnow() - older_than
    with transaction() as session:
        released = outbox.release_dead_claims(session)
    if released:
        log.info("sync.claims_released links=%s", released)
    with transaction() as session:
        found = waiting.find(session, cutoff, connection_id, released)
    return sum(enqueue(task, arg) for task, arg in found.jobs())


@app.task(name="bbsync.reconcile_all")
def reconcile_all(comments: str = "none") -> dict:
    """The periodic job (the Procfile's beat): poll each connection for what webhooks missed,
    and feed it to the same engine. One call per repository, plus one per 100 changed issues,
    plus, in the comment passes (`comments`, see worker.sync.reconcile), one per issue listed."""
    from worker.sync.reconcile import reconcile_connection
    with transaction() as session:
        ids = list(session.scalars(select(Connection.id).where(Connection.tracker_removed_at.is_(None),
                                                               Connection.paused_at.is_(None))))
    summary = {}
    for connection_id in ids:
        try:
            report = reconcile_connection(connection_id, comments=comments)
        except bitbucket_errors.BitbucketError as exc:
            log.warning("reconcile.failed connection=%s error=%s", connection_id, exc.__class__.__name__)
            continue
        for delivery_id in report.enqueue:
            enqueue_delivery(delivery_id)
        for link_id in report.stuck_links:
            enqueue("push_link", link_id)
        summary[report.connection] = {"api_calls": report.api_calls, "issues_seen": report.issues_seen}
    return summary


@app.task(name="bbsync.requeue_pending")
def requeue_pending_task() -> int:
    return requeue_pending()


@worker_ready.connect
def _requeue_on_start(**_kwargs) -> None:
    # Deliveries stored while no worker or broker was up are picked up when one starts.
    count = requeue_pending(older_than=timedelta(0))
    if count:
        log.info("worker.requeued count=%d", count)
