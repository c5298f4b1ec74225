"""Forward sync: one stored Bitbucket delivery -> the target side, in one transaction.

The order of work is the design's: lock the delivery (so a re-run sees it done), lock the link
(so one link's events apply one at a time), normalize, decide each field against the shadow,
apply to the target, then update shadows and write the ledger in the same transaction.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from dataclasses import field as dataclass_field

from sqlalchemy import select
from sqlalchemy.orm import Session

from worker import connections, ledger
from worker.db.models import (CommentLink, Connection, Delivery, Link, OutgoingChange, Shadow,
                              TicketComment, utcnow)
from worker.engine.events import MISSING, SYNCED_FIELDS, IssueEvent, MalformedEvent, normalize
from worker.engine.merge import FieldDecision, ShadowPair, decide_field, is_stale
from worker.engine.merge import pick_winner
from worker.sync import conflicts, deliveries
from worker.sync.markers import find_comment_marker, find_ticket_marker
from worker.sync import reverse
from worker.sync.reverse import ECHO_WINDOW
from worker.targets.local import LocalHelpdesk

log = logging.getLogger("bbsync.sync")

DIRECTION = "forward"
TARGET_DEFAULTS = {"status": "new", "priority": "normal", "type": "problem"}


@dataclass
class Outcome:
    delivery_id: str
    status: str  # processed | ignored | held | failed | skipped (already done)
    detail: str = ""
    released: list[str] = dataclass_field(default_factory=list)  # held deliveries to enqueue now
    push_link: int | None = None  # a link with helpdesk changes now waiting for Bitbucket


def process_delivery(session: Session, delivery_id: str) -> Outcome:
    delivery = session.scalar(select(Delivery).where(Delivery.id == delivery_id).with_for_update())
    if delivery is None:
        return Outcome(delivery_id, "failed", "no such delivery")
    if delivery.status != "received":
        # A redelivery, a sweeper's second enqueue, or an operator's re-run: no second effect.
        log.info("sync.delivery_skipped delivery=%s status=%s", delivery_id, delivery.status)
        return Outcome(delivery_id, "skipped", f"already {delivery.status}")
    conn = session.get(Connection, delivery.connection_id)
    behind = deliveries.blocking(session, delivery)
    if behind is not None:
        deliveries.hold(session, delivery, behind)
        return Outcome(delivery.id, "held", f"behind {behind}")

    try:
        event = normalize(delivery.event_key, json.loads(delivery.body))
    except (MalformedEvent, ValueError) as exc:
        return _finish(session, conn, delivery, "ignored", f"malformed payload: {exc}")
    if event.issue.repo not in {r.full_name for r in conn.repos}:
        return _finish(session, conn, delivery, "ignored",
                       f"repository {event.issue.repo} is not part of connection {conn.name}")

    # FOR NO KEY UPDATE: one event per link at a time, across any number of workers, without
    # blocking the inserts that merely reference the link (ledger, outbox, comment links).
    link = session.scalar(
        select(Link).where(Link.connection_id == conn.id, Link.bitbucket_repo == event.issue.repo,
                           Link.bitbucket_issue_id == event.issue.issue_id).with_for_update(key_share=True))
    target = LocalHelpdesk(session)
    if link is None:
        link = _adopt_escalation(session, conn, delivery, event) or _create_link(
            session, conn, delivery, event, target)
        _record_cleaning(session, conn, delivery, event, link)
    else:
        _record_cleaning(session, conn, delivery, event, link)
        if is_stale(event.issue.updated_at, link.bitbucket_updated_at):
            _overwritten(session, conn, delivery, event, link, target)
            if _stale_echoes(session, conn, delivery, event, link):
                _sync_comment(session, conn, delivery, event, link, target)
                return _finish(session, conn, delivery, "processed", "echo", link)
            ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="stale",
                          link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                          bitbucket_at=event.issue.updated_at,
                          detail=f"event from {event.issue.updated_at.isoformat()} is older than "
                                 f"the {link.bitbucket_updated_at.isoformat()} already applied")
            _sync_comment(session, conn, delivery, event, link, target)
            return _finish(session, conn, delivery, "processed", "stale", link)
        _update_link(session, conn, delivery, event, link, target)
    _sync_comment(session, conn, delivery, event, link, target)
    if event.issue.updated_at and (link.bitbucket_updated_at is None
                                   or event.issue.updated_at > link.bitbucket_updated_at):
        link.bitbucket_updated_at = event.issue.updated_at
    return _finish(session, conn, delivery, "processed", link=link)


def _has_pending_push(session: Session, link: Link) -> bool:
    return session.scalar(select(OutgoingChange.id).where(
        OutgoingChange.link_id == link.id, OutgoingChange.state == "pending").limit(1)) is not None


def _finish(session: Session, conn: Connection, delivery: Delivery, status: str,
            detail: str = "", link: Link | None = None) -> Outcome:
    if status == "ignored":
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="ignored",
                      delivery_id=delivery.id, detail=detail)
    delivery.status = status
    delivery.error = detail if status in ("ignored", "failed") else None
    delivery.processed_at = utcnow()
    released = deliveries.release(session, conn.id, delivery.issue_key)
    push_link = link.id if link is not None and _has_pending_push(session, link) else None
    log.info("sync.delivery_%s connection=%s delivery=%s event=%s %s", status, conn.name,
             delivery.id, delivery.event_key, detail)
    return Outcome(delivery.id, status, detail, released, push_link)


def _record_cleaning(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                     link: Link) -> None:
    """What normalize changed in the payload's text so it could be stored (NULs, lone
    surrogates, over-long text): said once per delivery, since the ticket no longer shows it."""
    if event.cleaned:
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="noop",
                      link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                      bitbucket_at=event.issue.updated_at,
                      detail="text cleaned before storing: " + "; ".join(event.cleaned))


def _create_link(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                 target: LocalHelpdesk) -> Link:
    """First sight of an issue (created now, or before the connection existed)."""
    tables = connections.tables_for(conn)
    fields: dict[str, str | None] = {}
    decisions: list[FieldDecision] = []
    for field in SYNCED_FIELDS:
        incoming = event.issue.fields.get(field, MISSING)
        if incoming is MISSING:
            ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="unmapped",
                          field=field, delivery_id=delivery.id, actor=event.actor,
                          detail="the payload carries no value for this field")
            continue
        to_dest, to_source = tables.translators(field, "bitbucket")
        d = decide_field(field, incoming, None, None, to_dest=to_dest, to_source=to_source)
        decisions.append(d)
        if d.write:
            fields[field] = d.new_dest
    for field, default in TARGET_DEFAULTS.items():
        fields.setdefault(field, default)

    target_id = target.create(fields, reporter=event.issue.reporter)
    link = Link(connection_id=conn.id, bitbucket_repo=event.issue.repo,
                bitbucket_issue_id=event.issue.issue_id, bitbucket_url=event.issue.url,
                target_id=target_id)
    session.add(link)
    session.flush()  # a concurrent creator of the same link fails here, and its task retries
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="applied",
                  link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                  bitbucket_at=event.issue.updated_at, new_value=f"ticket {target_id}",
                  detail=f"created ticket {target_id} for {event.issue.repo}#{event.issue.issue_id}")
    for d in decisions:
        _record_decision(session, conn, delivery, event, link, d, created=True)
    return link


def _update_link(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                 link: Link, target: LocalHelpdesk) -> None:
    tables = connections.tables_for(conn)
    current = target.read(link.target_id)
    shadows = {s.field: s for s in session.scalars(select(Shadow).where(Shadow.link_id == link.id))}
    in_flight = _in_flight(session, link)
    changes: dict[str, str | None] = {}
    decided = 0
    for field in SYNCED_FIELDS:
        incoming = event.issue.fields.get(field, MISSING)
        if incoming is MISSING:
            continue
        row = shadows.get(field)
        if _is_echo(session, conn, delivery, event, link, field, incoming, in_flight, row, current):
            decided += 1
            continue
        if (row is not None and row.bitbucket_at is not None and event.issue.updated_at is not None
                and event.issue.updated_at < row.bitbucket_at):
            # Older than the value held for this field (our own later write): no news for it,
            # unless it is the Bitbucket edit our write replaced, which makes a conflict. The
            # same value again (a second echo of a write made twice) is not a decision at all.
            if incoming != row.bitbucket_value:
                if not _overwritten(session, conn, delivery, event, link, target, only=field):
                    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="stale",
                                  field=field, link_id=link.id, delivery_id=delivery.id,
                                  actor=event.actor, bitbucket_value=incoming,
                                  bitbucket_at=event.issue.updated_at,
                                  detail=f"older than the value written at {row.bitbucket_at.isoformat()}")
                decided += 1
            continue
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
    target.apply(link.target_id, changes)
    if not decided and event.comment is None:
        # Nothing differs from what both sides hold. Said in the ledger all the same, so that
        # every delivery is accounted for: our own issue creation (an escalation) coming back
        # is an echo; anything else changed nothing we sync.
        ours = event.key == "issue:created"
        ledger.record(session, connection_id=conn.id, direction=DIRECTION,
                      outcome="echo" if ours else "noop", link_id=link.id, delivery_id=delivery.id,
                      actor=event.actor, bitbucket_at=event.issue.updated_at,
                      detail="the issue our escalation created" if ours else
                             "no synced field differs from the last agreed state")


def _overwritten(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                 link: Link, target: LocalHelpdesk, only: str | None = None) -> set[str]:
    """A stale event carrying a Bitbucket edit that our later write replaced: both sides changed
    the field, so it is a conflict, decided now that the event tells us when Bitbucket's edit
    happened. If Bitbucket should have won, its value goes to the ticket and back to Bitbucket."""
    rows = [r for r in session.scalars(select(OutgoingChange).where(
        OutgoingChange.link_id == link.id, OutgoingChange.kind == "fields",
        OutgoingChange.state == "sent", OutgoingChange.created_at >= utcnow() - ECHO_WINDOW))
        if r.overwritten]
    tables = connections.tables_for(conn)
    handled: set[str] = set()
    for row in rows:
        for field, replaced in list(row.overwritten.items()):
            value = replaced["was"]
            if (only is not None and field != only) or event.issue.fields.get(field, MISSING) != value:
                continue
            handled.add(field)
            row.overwritten = {k: v for k, v in row.overwritten.items() if k != field} or None
            current = target.read(link.target_id)
            policy = connections.policy_for(conn, field)
            winner = pick_winner(policy, "bitbucket", event.issue.updated_at, row.created_at)
            shadow = session.get(Shadow, (link.id, field))
            entry = ledger.record(
                session, connection_id=conn.id, direction=DIRECTION, outcome="conflict", field=field,
                link_id=link.id, delivery_id=delivery.id, actor=event.actor, policy=policy,
                winner=winner, bitbucket_value=value, target_value=current.fields.get(field),
                base_value=replaced["base"], bitbucket_at=event.issue.updated_at,
                target_at=row.created_at,
                detail="both sides changed; Bitbucket's edit was replaced by our write" +
                       {"source": ", and Bitbucket's value is restored", "dest": ", which stands",
                        None: "; awaiting a person"}[winner])
            if winner == "source":
                mapped = tables.to_target(field, value) if field in tables.fields else value
                target.apply(link.target_id, {field: mapped})
                session.add(OutgoingChange(connection_id=conn.id, link_id=link.id, kind="fields",
                                           fields=[field], actor=event.actor))
            elif winner is None:
                session.flush()
                conflicts.open_conflict(session, connection_id=conn.id, link_id=link.id, field=field,
                                        base=ShadowPair(shadow.bitbucket_value, shadow.target_value) if shadow else None,
                                        bitbucket_value=value, target_value=current.fields.get(field),
                                        ledger_id=entry.id)
    return handled


def _stale_echoes(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                  link: Link) -> bool:
    """An older write of ours seen back after a newer one: an echo, and it must not touch the
    shadow (which already holds the newer write)."""
    found = False
    for row in _in_flight(session, link):
        for field, value in list((row.unechoed or {}).items()):
            if event.issue.fields.get(field, MISSING) == value:
                row.unechoed = {k: v for k, v in row.unechoed.items() if k != field} or None
                found = True
                ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="echo",
                              field=field, link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                              bitbucket_value=value, bitbucket_at=event.issue.updated_at,
                              detail=f"our own earlier write (outbox {row.id}) seen back after a newer one")
    return found


def _in_flight(session: Session, link: Link) -> list[OutgoingChange]:
    """Our own writes to this issue whose webhooks may still be on their way back."""
    return [r for r in session.scalars(select(OutgoingChange).where(
        OutgoingChange.link_id == link.id, OutgoingChange.kind == "fields",
        OutgoingChange.state.in_(("sending", "sent")),
        OutgoingChange.created_at >= utcnow() - ECHO_WINDOW)) if r.unechoed]


def _is_echo(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent, link: Link,
             field: str, incoming, in_flight: list[OutgoingChange], shadow: Shadow | None,
             current) -> bool:
    """A value we wrote coming back. Recorded as an echo, and nothing else happens (promise 4);
    this holds even when the webhook beats our own commit of the write (the values were
    committed to the outbox before the write was sent)."""
    for row in in_flight:
        if row.unechoed and field in row.unechoed and row.unechoed[field] == incoming:
            row.unechoed = {k: v for k, v in row.unechoed.items() if k != field} or None
            # Both sides agree on what we wrote and the helpdesk value we wrote it from, not
            # on whatever the ticket says now (it may have moved on since).
            written_from = ((row.sent_values or {}).get(field) or {}).get("target")
            newer_held = (shadow is not None and shadow.bitbucket_at is not None
                          and event.issue.updated_at is not None
                          and event.issue.updated_at < shadow.bitbucket_at)
            if not newer_held:  # a Bitbucket edit after our write was already applied: keep it
                if shadow is None:
                    shadow = Shadow(link_id=link.id, field=field)
                    session.add(shadow)
                shadow.bitbucket_value, shadow.target_value = incoming, written_from
                shadow.bitbucket_at = event.issue.updated_at
            ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="echo",
                          field=field, link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                          bitbucket_value=incoming, target_value=written_from,
                          bitbucket_at=event.issue.updated_at,
                          detail=f"our own write (outbox {row.id}) seen back")
            if (not newer_held and field in reverse.BITBUCKET_KEYS
                    and current.fields.get(field) != written_from and not _queued(session, link, field)):
                # The ticket moved on after the write and nothing will carry its value out: the
                # write was never recorded (a crash before finish), so no follow-up push was
                # queued, and meanwhile an older Bitbucket snapshot changed the ticket.
                session.add(OutgoingChange(connection_id=conn.id, link_id=link.id, kind="fields",
                                           fields=[field], actor=event.actor))
            return True
    return False


def _queued(session: Session, link: Link, field: str) -> bool:
    """Whether a push not yet finished will send this field's current value anyway."""
    return any(field in (r.fields or []) for r in session.scalars(select(OutgoingChange).where(
        OutgoingChange.link_id == link.id, OutgoingChange.kind == "fields",
        OutgoingChange.state.in_(("pending", "sending")))))


def _adopt_escalation(session: Session, conn: Connection, delivery: Delivery,
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
        ticket = LocalHelpdesk(session).read(str(ticket_id))
        for field in SYNCED_FIELDS:
            incoming = event.issue.fields.get(field, MISSING)
            if incoming is not MISSING:
                session.add(Shadow(link_id=link.id, field=field, bitbucket_value=incoming,
                                   target_value=ticket.fields.get(field),
                                   bitbucket_at=event.issue.updated_at))
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="echo",
                  link_id=link.id, delivery_id=delivery.id, actor=event.actor,
                  detail=f"issue {event.issue.repo}#{event.issue.issue_id} is our escalation of "
                         f"ticket {ticket_id}")
    return link


def _record_decision(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
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
    entry = ledger.record(
        session, connection_id=conn.id, direction=DIRECTION, outcome=d.outcome, field=d.field,
        link_id=link.id, delivery_id=delivery.id, actor=event.actor,
        base_value=d.base.source if d.base else None,
        old_value=None if created else d.dest_value,
        new_value=d.new_dest if d.write else d.dest_value,
        bitbucket_value=d.source_value, target_value=d.dest_value,
        bitbucket_at=event.issue.updated_at, policy=d.policy, winner=d.winner,
        detail=d.detail or None,
    )
    if d.outcome == "conflict" and d.winner == "dest" and d.field in reverse.BITBUCKET_KEYS:
        # The helpdesk keeps its value, so Bitbucket must be given it (the base stays, so the
        # push sees the helpdesk's change).
        session.add(OutgoingChange(connection_id=conn.id, link_id=link.id, kind="fields",
                                   fields=[d.field], actor=event.actor))
    if d.outcome == "conflict" and d.winner is None:
        session.flush()
        conflicts.open_conflict(session, connection_id=conn.id, link_id=link.id, field=d.field,
                                base=d.base, bitbucket_value=d.source_value, target_value=d.dest_value,
                                ledger_id=entry.id)


def _sync_comment(session: Session, conn: Connection, delivery: Delivery, event: IssueEvent,
                  link: Link, target: LocalHelpdesk) -> None:
    """A Bitbucket comment becomes an internal note on the ticket, once."""
    comment = event.comment
    if comment is None:
        return
    exists = session.scalar(select(CommentLink.id).where(
        CommentLink.link_id == link.id, CommentLink.bitbucket_comment_id == comment.id))
    ours = find_comment_marker(comment.body, conn.name)
    if ours is not None:
        # A helpdesk comment we posted, seen back. If our own commit has not happened yet (or
        # never will, after a crash), the marker is enough to link it: never a second note.
        linked = session.scalar(select(CommentLink.id).where(
            CommentLink.link_id == link.id, CommentLink.target_comment_id == str(ours)))
        if exists is None and linked is None and session.get(TicketComment, ours) is not None:
            session.add(CommentLink(link_id=link.id, bitbucket_comment_id=comment.id,
                                    target_comment_id=str(ours)))
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="echo",
                      field="comment", link_id=link.id, delivery_id=delivery.id, actor=comment.author,
                      bitbucket_value=str(comment.id), detail=f"our own post of helpdesk comment {ours}")
        return
    if exists is not None:
        ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="noop",
                      field="comment", link_id=link.id, delivery_id=delivery.id, actor=comment.author,
                      bitbucket_value=str(comment.id), detail="comment already synced")
        return
    note_id = target.add_comment(link.target_id, comment.body, internal=True, author=comment.author)
    session.add(CommentLink(link_id=link.id, bitbucket_comment_id=comment.id, target_comment_id=note_id))
    ledger.record(session, connection_id=conn.id, direction=DIRECTION, outcome="applied",
                  field="comment", link_id=link.id, delivery_id=delivery.id, actor=comment.author,
                  bitbucket_value=str(comment.id), new_value=_excerpt(comment.body),
                  detail=f"internal note {note_id} from Bitbucket comment {comment.id}")


def _excerpt(text: str, limit: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"
