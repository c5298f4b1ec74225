"""Forward sync: one stored Bitbucket delivery -> the target side, in one transaction.

The order of work is the design's: the delivery, its connection and what is stuck of its issue
come read with its run (worker.sync.deliveries.start_run); lock the link (so one link's events
apply one at a time), normalize, decide each field against the shadow, apply to the target,
update shadows, write the ledger and mark the delivery done, in one transaction. Marking it
done is conditional: a second run of the same delivery that gets there second rolls back.
What an incoming value is (our echo, stale, news) is judged by worker.engine.judge and merged by
worker.engine.merge; echoes and replaced edits are recorded by worker.sync.echoes, comments by
worker.sync.forward_comments.
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
from worker.engine.events import MISSING, SYNCED_FIELDS, IssueEvent, MalformedEvent, normalize
from worker.engine.judge import Held, Kind, judge
from worker.engine.markers import find_ticket_marker
from worker.engine.merge import FieldDecision, ShadowPair, decide_field, is_stale
from worker.engine.states import DeliveryStatus, Direction, OutboxKind, Outcome, Winner
from worker.sync import conflicts, deliveries, echoes, forward_comments, outbox, reverse
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
    link, shadows = echoes.lock_link(session, conn.id, event.issue.repo, event.issue.issue_id,
                                     event.comment.id if event.comment else None)
    target = writer_for(session, conn)
    if link is None:
        link = _adopt_escalation(session, conn, delivery, event) or _create_link(
            session, conn, delivery, event, target)
        _record_cleaning(session, conn, delivery, event, link)
    else:
        _record_cleaning(session, conn, delivery, event, link)
        if is_stale(event.issue.updated_at, link.bitbucket_updated_at):
            echoes.record_overwritten(session, conn, delivery, event, link, target)
            if echoes.record_late_echoes(session, conn, delivery, event, link):
                forward_comments.sync_comment(session, conn, delivery, event, link, target)
                return _finish(session, conn, delivery, DeliveryStatus.PROCESSED, "echo", link)
            ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.STALE,
                          link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                          bitbucket_at=event.issue.updated_at,
                          detail=f"event from {event.issue.updated_at.isoformat()} is older than "
                                 f"the {link.bitbucket_updated_at.isoformat()} already applied")
            forward_comments.sync_comment(session, conn, delivery, event, link, target)
            return _finish(session, conn, delivery, DeliveryStatus.PROCESSED, "stale", link)
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
    # Direct: the new ticket's id. Queued: none yet (the create is an outbox row; the link
    # is flushed to carry it, and gets the id when the create is sent).
    link.target_id = target.create(conn, link, fields, event.issue.reporter, event.actor)
    session.add(link)
    session.flush()  # a concurrent creator of the same link fails here, and its task retries
    issue = f"{event.issue.repo}#{event.issue.issue_id}"
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.APPLIED,
                  link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                  bitbucket_at=event.issue.updated_at,
                  new_value=f"ticket {link.target_id}" if link.target_id else None,
                  detail=f"created ticket {link.target_id} for {issue}" if link.target_id else
                         f"queued the creation of a {conn.target} item for {issue}")
    for d in decisions:
        _record_decision(session, conn, delivery, event, link, d, created=True)
    return link


def _update_link(session: Session, conn: Connection, delivery: Taken, event: IssueEvent,
                 link: Link, target: Direct | Queued, shadows: dict[str, Shadow]) -> None:
    tables = connections.tables_for(conn)
    current = target.read(link)
    writes = {r.id: r for r in echoes.in_flight(session, link)}
    expected = echoes.expected(writes.values())
    changes: dict[str, str | None] = {}
    decided = 0
    for field in SYNCED_FIELDS:
        incoming = event.issue.fields.get(field, MISSING)
        if incoming is MISSING:
            continue
        row = shadows.get(field)
        verdict = judge(field, incoming, expected=expected, event_at=event.issue.updated_at,
                        held=Held(row.bitbucket_value, row.target_value, row.bitbucket_at) if row else None,
                        current_target=current.fields.get(field), pushable=field in reverse.BITBUCKET_KEYS)
        if verdict.kind is Kind.ECHO:
            echoes.record_echo(session, conn, delivery, event, link, field, incoming, verdict, writes, row)
            decided += 1
        elif verdict.kind is Kind.STALE:
            # Older than the value held for this field (our own later write): no news for it,
            # unless it is the Bitbucket edit our write replaced, which makes a conflict. The
            # same value again (a second echo of a write made twice) is not a decision at all.
            if not verdict.repeated:
                if not echoes.record_overwritten(session, conn, delivery, event, link, target, only=field):
                    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome=Outcome.STALE,
                                  field=field, link_id=link.id, delivery_id=delivery.id,
                                  actor=event.actor, bitbucket_value=incoming,
                                  bitbucket_at=event.issue.updated_at,
                                  detail=f"older than the value written at {row.bitbucket_at.isoformat()}")
                decided += 1
        else:
            base = ShadowPair(row.bitbucket_value, row.target_value) if row else None
            to_dest, to_source = tables.translators(field, "bitbucket")
            d = decide_field(field, incoming, current.fields.get(field), base,
                             to_dest=to_dest, to_source=to_source,
                             policy=connections.policy_for(conn, field),
                             source_at=event.issue.updated_at, dest_at=current.updated_at)
            if d is None:
                continue
            decided += 1
            if d.write:
                changes[field] = d.new_dest
            _record_decision(session, conn, delivery, event, link, d, shadow=row)
    target.apply(conn, link, changes, sources={f: event.issue.fields.get(f) for f in changes},
                 actor=event.actor, expected_version=current.version)
    if not decided and event.comment is None:
        # Nothing differs from what both sides hold. Said in the ledger all the same, so that
        # every delivery is accounted for: our own issue creation (an escalation) coming back
        # is an echo; anything else changed nothing we sync.
        ours = event.key == "issue:created"
        ledger.record(session, connection_id=conn.id, direction=DIRECTION,
                      outcome=Outcome.ECHO if ours else Outcome.NOOP, link_id=link.id, delivery_id=delivery.id,
                      actor=event.actor, bitbucket_at=event.issue.updated_at,
                      detail="the issue our escalation created" if ours else
                             "no synced field differs from the last agreed state")


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
                     created: bool = False) -> None:
    if d.new_shadow is not None:
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
        old_value=None if created else d.dest_value,
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


