"""Forward sync: one stored Bitbucket delivery -> the target side, in one transaction.

Load, decide, carry out, record. The delivery, its connection and what is stuck of its issue
come read with its run (worker.sync.deliveries.start_run); the link is locked with its shadows
(worker.sync.links: one link's events apply one at a time); the payload is normalized and every
field decided by worker.engine.decide, pure (our echo, stale, or news merged against the
shadow); this module carries the decisions out (the target's changes, shadows, what goes back
to Bitbucket, conflicts), writes the ledger and marks the delivery done, conditionally: a second
run of the same delivery that gets there second rolls back. A stale event's leftovers are
worker.sync.stale's, a comment's worker.sync.forward_comments'.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import connections

from worker.db import ledger
from worker.db.models import Connection, Link, OutboxEntry, Shadow, utcnow
from worker.engine.decide import (Echoed, FieldDecision, FieldView, Held, Stale, decide_field,
                                  decide_update, is_stale)
from worker.engine.events import MISSING, SYNCED_FIELDS, IssueEvent, MalformedEvent, normalize
from worker.engine.markers import find_ticket_marker
from worker.engine.states import DeliveryStatus, Direction, OutboxKind, Outcome, Winner
from worker.sync import conflicts, deliveries, forward_comments, links, outbox, reverse, stale
from worker.sync.deliveries import Taken
from worker.sync.target_writes import Direct, Queued, writer_for
from worker.targets import side_for

log = logging.getLogger("bbsync.sync")

DIRECTION = Direction.FORWARD


@dataclass
class Processed:
    delivery_id: str
    status: str  # processed | ignored | held | failed | skipped (already done)
    detail: str = ""
    released: list[str] = dataclass_field(default_factory=list)  # held deliveries to enqueue now
    push_link: int | None = None  # a link with helpdesk changes now waiting for Bitbucket


def process_delivery(session: Session, delivery: str | Taken) -> Processed:
    """Apply one delivery, taken by deliveries.start_run (or read here by its id). A second
    run of it that finds it done ends with deliveries.AlreadyFinished, and its transaction,
    rolled back, leaves no effect."""
    taken = deliveries.read(session, delivery) if isinstance(delivery, str) else delivery
    if taken is None:
        return Processed(str(delivery), DeliveryStatus.FAILED, "no such delivery")
    if taken.status != DeliveryStatus.RECEIVED:
        # A redelivery, a sweeper's second enqueue, or an operator's re-run: no second effect.
        log.info("sync.delivery_skipped delivery=%s status=%s", taken.id, taken.status)
        return Processed(taken.id, "skipped", f"already {taken.status}")
    if taken.behind is not None:
        deliveries.hold(session, taken, taken.behind)
        return Processed(taken.id, DeliveryStatus.HELD, f"behind {taken.behind}")
    conn = connections.cached(session, taken.connection_id, taken.connection_revision)
    try:
        event = normalize(taken.event_key, json.loads(taken.body))
    except (MalformedEvent, ValueError) as exc:
        return _finish(session, conn, taken, DeliveryStatus.IGNORED, f"malformed payload: {exc}")
    if event.issue.repo not in {r.full_name for r in conn.repos}:
        return _finish(session, conn, taken, DeliveryStatus.IGNORED,
                       f"repository {event.issue.repo} is not part of connection {conn.name}")
    return _apply(session, conn, taken, event)


def _apply(session: Session, conn: Connection, delivery: Taken, event: IssueEvent) -> Processed:
    link, shadows = links.lock_link(session, conn.id, event.issue.repo, event.issue.issue_id,
                                     event.comment.id if event.comment else None)
    target = writer_for(session, conn)
    if link is None:
        link = _adopt_escalation(session, conn, delivery, event) or _create_link(
            session, conn, delivery, event, target)
        _record_cleaning(session, conn, delivery, event, link)
    else:
        _record_cleaning(session, conn, delivery, event, link)
        if is_stale(event.issue.updated_at, link.bitbucket_updated_at):
            detail = stale.record_stale_event(session, conn, delivery, event, link, target)
            forward_comments.sync_comment(session, conn, delivery, event, link, target)
            return _finish(session, conn, delivery, DeliveryStatus.PROCESSED, detail, link)
        _update_link(session, conn, delivery, event, link, target, shadows)
    forward_comments.sync_comment(session, conn, delivery, event, link, target)
    if event.issue.updated_at and (link.bitbucket_updated_at is None
                                   or event.issue.updated_at > link.bitbucket_updated_at):
        link.bitbucket_updated_at = event.issue.updated_at
    return _finish(session, conn, delivery, DeliveryStatus.PROCESSED, link=link)


def _finish(session: Session, conn: Connection, delivery: Taken, status: str,
            detail: str = "", link: Link | None = None) -> Processed:
    if status == DeliveryStatus.IGNORED:
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.IGNORED,
                      delivery_id=delivery.id, detail=detail)
    deliveries.finish(session, delivery.id, status,
                      detail if status in (DeliveryStatus.IGNORED, DeliveryStatus.FAILED) else None)
    # Held deliveries of the issue wait for this one only if there were any when it started
    # (one can be held only behind a failed one, which then still stops their release).
    released = deliveries.release(session, conn.id, delivery.issue_key) if delivery.holding else []
    push_link = link.id if link is not None and link.id in outbox.added(session) else None
    log.info("sync.delivery_%s connection=%s delivery=%s event=%s %s", status, conn.name,
             delivery.id, delivery.event_key, detail)
    return Processed(delivery.id, status, detail, released, push_link)


def _record_cleaning(session: Session, conn: Connection, delivery: Taken, event: IssueEvent,
                     link: Link) -> None:
    """What normalize changed in the payload's text so it could be stored (NULs, lone
    surrogates, over-long text): said once per delivery, since the ticket no longer shows it."""
    if event.cleaned:
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.NOOP,
                      link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                      bitbucket_at=event.issue.updated_at,
                      detail="text cleaned before storing: " + "; ".join(event.cleaned))


def _create_link(session: Session, conn: Connection, delivery: Taken, event: IssueEvent,
                 target: Direct | Queued) -> Link:
    """First sight of an issue (created now, or before the connection existed)."""
    tables = connections.tables_for(conn)
    fields: dict[str, str | None] = {}
    decisions: list[FieldDecision] = []
    for field in SYNCED_FIELDS:
        incoming = event.issue.fields.get(field, MISSING)
        if incoming is MISSING:
            ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.UNMAPPED,
                          field=field, delivery_id=delivery.id, actor=event.actor,
                          detail="the payload carries no value for this field")
            continue
        to_dest, to_source = tables.translators(field, "bitbucket")
        d = decide_field(field, incoming, None, None, to_dest=to_dest, to_source=to_source)
        decisions.append(d)
        if d.write:
            fields[field] = d.new_dest
    for field, default in target.side.defaults.items():
        fields.setdefault(field, default)

    link = Link(connection_id=conn.id, bitbucket_repo=event.issue.repo,
                bitbucket_issue_id=event.issue.issue_id, bitbucket_url=event.issue.url,
                bitbucket_updated_at=event.issue.updated_at)
    # Direct: the new ticket's id, made first. Queued: none yet (the create is an outbox row
    # naming the link, which gets the id when the create is sent).
    if not target.queued:
        link.target_id = target.create(conn, link, fields, event.issue.reporter, event.actor)
    links.insert(session, link)  # a concurrent creator of the same link fails here, and retries
    if target.queued:
        target.create(conn, link, fields, event.issue.reporter, event.actor)
    issue = f"{event.issue.repo}#{event.issue.issue_id}"
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.APPLIED,
                  link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                  bitbucket_at=event.issue.updated_at,
                  new_value=f"ticket {link.target_id}" if link.target_id else None,
                  detail=f"created ticket {link.target_id} for {issue}" if link.target_id else
                         f"queued the creation of a {conn.target} item for {issue}")
    first: list[dict] = []  # the link's shadows, inserted together
    for d in decisions:
        _record_decision(session, conn, delivery, event, link, d, created=first)
    links.insert_shadows(session, first)
    return link


def _update_link(session: Session, conn: Connection, delivery: Taken, event: IssueEvent,
                 link: Link, target: Direct | Queued, shadows: dict[str, Shadow]) -> None:
    tables = connections.tables_for(conn)
    current = target.read(link)
    writes = {r.id: r for r in links.in_flight(session, link)}
    views = {}
    for field in SYNCED_FIELDS:
        row = shadows.get(field)
        to_dest, to_source = tables.translators(field, "bitbucket")
        views[field] = FieldView(
            held=Held(row.bitbucket_value, row.target_value, row.bitbucket_at) if row else None,
            current=current.fields.get(field), pushable=field in reverse.BITBUCKET_KEYS,
            policy=connections.policy_for(conn, field), to_dest=to_dest, to_source=to_source)
    decisions = decide_update(event.issue.fields, event.issue.updated_at, views,
                              links.expected(writes.values()), current.updated_at)
    changes: dict[str, str | None] = {}
    for d in decisions:
        if isinstance(d, Echoed):
            _record_echo(session, conn, delivery, event, link, d, writes, shadows.get(d.field))
        elif isinstance(d, Stale):
            # No news for this field, unless it is the Bitbucket edit our write replaced,
            # which makes a conflict.
            if not stale.record_overwritten(session, conn, delivery, event, link, target, only=d.field):
                ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.STALE,
                              field=d.field, link_id=link.id, delivery_id=delivery.id,
                              actor=event.actor, bitbucket_value=d.incoming,
                              bitbucket_at=event.issue.updated_at,
                              detail=f"older than the value written at {d.held_at.isoformat()}")
        else:
            if d.write:
                changes[d.field] = d.new_dest
            _record_decision(session, conn, delivery, event, link, d, shadow=shadows.get(d.field))
    target.apply(conn, link, changes, sources={f: event.issue.fields.get(f) for f in changes},
                 actor=event.actor, expected_version=current.version)
    if not decisions and event.comment is None:
        # Nothing differs from what both sides hold. Said in the ledger all the same, so that
        # every delivery is accounted for: our own issue creation (an escalation) coming back
        # is an echo; anything else changed nothing we sync.
        ours = event.key == "issue:created"
        ledger.record(session, connection_id=conn.id, direction=DIRECTION,
                      outcome=Outcome.ECHO if ours else Outcome.NOOP, link_id=link.id, delivery_id=delivery.id,
                      actor=event.actor, bitbucket_at=event.issue.updated_at,
                      detail="the issue our escalation created" if ours else
                             "no synced field differs from the last agreed state")


def _record_echo(session: Session, conn: Connection, delivery: Taken, event: IssueEvent, link: Link,
                 echo: Echoed, writes: dict[int, OutboxEntry], shadow: Shadow | None) -> None:
    """A value we wrote, seen back: recorded as an echo, and nothing else happens (promise 4).
    Both sides agree on what we wrote and the helpdesk value it was written from, not on
    whatever the ticket says now (it may have moved on since)."""
    verdict = echo.verdict
    links.seen(writes[verdict.outbox_id], echo.field)
    if verdict.move_shadow:
        if shadow is None:
            shadow = Shadow(link_id=link.id, field=echo.field)
            session.add(shadow)
        shadow.bitbucket_value, shadow.target_value = echo.incoming, verdict.written_from
        shadow.bitbucket_at = event.issue.updated_at
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.ECHO,
                  field=echo.field, link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                  bitbucket_value=echo.incoming, target_value=verdict.written_from,
                  bitbucket_at=event.issue.updated_at,
                  detail=f"our own write (outbox {verdict.outbox_id}) seen back")
    if verdict.ticket_moved and not links.push_waiting(session, link, echo.field):
        # The ticket moved on after the write and nothing will carry its value out: the write
        # was never recorded (a crash before finish), so no follow-up push was queued, and
        # meanwhile an older Bitbucket snapshot changed the ticket.
        session.add(OutboxEntry(connection_id=conn.id, link_id=link.id, kind=OutboxKind.FIELDS,
                                fields=[echo.field], actor=event.actor))


def _adopt_escalation(session: Session, conn: Connection, delivery: Taken,
                      event: IssueEvent) -> Link | None:
    """An issue we created by escalating a ticket: link it to that ticket, never make a second.
    The webhook can beat the escalation's own commit, so the marker decides, not the link."""
    ticket_id = find_ticket_marker(event.issue.fields.get("description") or None, conn.name)
    if ticket_id is None:
        return None
    link = session.scalar(select(Link).where(Link.connection_id == conn.id,
                                             Link.target_id == str(ticket_id)))
    if link is None:
        link = Link(connection_id=conn.id, bitbucket_repo=event.issue.repo,
                    bitbucket_issue_id=event.issue.issue_id, bitbucket_url=event.issue.url,
                    target_id=str(ticket_id))
        session.add(link)
        session.flush()
        ticket = side_for(session, conn.target).read(str(ticket_id))
        for field in SYNCED_FIELDS:
            incoming = event.issue.fields.get(field, MISSING)
            if incoming is not MISSING:
                session.add(Shadow(link_id=link.id, field=field, bitbucket_value=incoming,
                                   target_value=ticket.fields.get(field),
                                   bitbucket_at=event.issue.updated_at))
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.ECHO,
                  link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                  detail=f"issue {event.issue.repo}#{event.issue.issue_id} is our escalation of "
                         f"ticket {ticket_id}")
    return link


def _record_decision(session: Session, conn: Connection, delivery: Taken, event: IssueEvent,
                     link: Link, d: FieldDecision, *, shadow: Shadow | None = None,
                     created: list[dict] | None = None) -> None:
    """`created`: the new link's shadow rows, for its creator to insert together."""
    if d.new_shadow is not None and created is not None:
        created.append({"link_id": link.id, "field": d.field, "bitbucket_value": d.new_shadow.source,
                        "target_value": d.new_shadow.dest, "bitbucket_at": event.issue.updated_at,
                        "target_at": utcnow() if d.write else None})
    elif d.new_shadow is not None:
        if shadow is None:
            shadow = Shadow(link_id=link.id, field=d.field)
            session.add(shadow)
        shadow.bitbucket_value = d.new_shadow.source
        shadow.target_value = d.new_shadow.dest
        shadow.bitbucket_at = event.issue.updated_at
        if d.write:
            shadow.target_at = utcnow()
    opens_conflict = d.outcome == Outcome.CONFLICT and d.winner is None  # names its entry
    entry = ledger.record(
        session, orm=opens_conflict, connection_id=conn.id, direction=DIRECTION, outcome=d.outcome, field=d.field,
        link_id=link.id, delivery_id=delivery.id, actor=event.actor,
        base_value=d.base.source if d.base else None,
        old_value=None if created is not None else d.dest_value,
        new_value=d.new_dest if d.write else d.dest_value,
        bitbucket_value=d.source_value, target_value=d.dest_value,
        bitbucket_at=event.issue.updated_at, policy=d.policy, winner=d.winner,
        detail=d.detail or None,
    )
    if d.outcome == Outcome.CONFLICT and d.winner == Winner.DEST and d.field in reverse.BITBUCKET_KEYS:
        # The helpdesk keeps its value, so Bitbucket must be given it (the base stays, so the
        # push sees the helpdesk's change).
        session.add(OutboxEntry(connection_id=conn.id, link_id=link.id, kind=OutboxKind.FIELDS,
                                   fields=[d.field], actor=event.actor))
    if opens_conflict:
        session.flush()
        conflicts.open_conflict(session, connection_id=conn.id, link_id=link.id, field=d.field,
                                base=d.base, bitbucket_value=d.source_value, target_value=d.dest_value,
                                ledger_id=entry.id)


