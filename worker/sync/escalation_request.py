"""Asking for an escalation: the step a web request may take. worker.sync.escalate runs it.

One short transaction and no call to Bitbucket: the request is checked (a connection syncs the
repository, the ticket and the attachments it names exist, the kind is one Bitbucket knows),
then either the ticket's existing link is the answer, or its `escalations` row (one per
connection and ticket) is found or created, in state `creating`, for a worker to run. The
caller commits, then queues the run (`bbsync.escalate` with the row's id); a run that is never
queued is found by the sweeper (worker.queue.tasks.requeue_pending).
"""
from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.db.models import Connection, ConnectionRepo, Escalation, Link
from worker.db.session import transaction
from worker.engine.states import EscalationState
from worker.targets import side_for
from worker.targets.side import Item, Side

KINDS = ("bug", "enhancement", "proposal", "task")


class EscalationError(ValueError):
    """The request cannot be escalated as asked; the message says why."""


@dataclass(frozen=True)
class Request:
    ticket_id: int
    repo: str
    connection: str | None = None
    kind: str | None = None
    include_comments: bool = False
    attachments: tuple[str, ...] = ()
    actor: str | None = None
    #: The connections it may go through (the caller's, and the ticket's own); None: any.
    within: frozenset[int] | None = None


@dataclass(frozen=True)
class Result:
    """The ticket's issue."""
    connection: str
    repo: str
    issue_id: int
    url: str | None
    created: bool  # False when the ticket was already escalated


@dataclass(frozen=True)
class Queued:
    """The ticket's escalation, still to run (or running): its row, and where it goes."""
    escalation_id: int
    state: EscalationState
    connection: str
    repo: str


def request_escalation(session: Session | None, req: Request) -> Result | Queued:
    """Check `req` and record it (in `session`, which the caller commits; or, without one, in a
    transaction of its own). LookupError: no such ticket; EscalationError: anything else wrong.

    A ticket already linked (by its escalation, or by the webhook of an issue that carries its
    marker) answers with that link, unless its escalation is not done: that one is resumed, so
    that its attachments still go up. The first request's options (repository, kind,
    attachments) stay with the row; a failed escalation asked for again goes back to
    `creating`, and its run resumes where the failed one stopped."""
    if session is None:
        with transaction() as own:
            return request_escalation(own, req)
    conn = _connection_for(session, req)
    _validate(side_for(session, conn.target), req)
    link = session.scalar(select(Link).where(Link.connection_id == conn.id,
                                             Link.target_id == str(req.ticket_id)))
    esc = _find(session, conn.id, req.ticket_id)
    if link is not None and (esc is None or esc.state == EscalationState.DONE):
        return Result(conn.name, link.bitbucket_repo, link.bitbucket_issue_id, link.bitbucket_url, False)
    if esc is None:
        esc = _insert(session, conn, req)
    elif esc.state != EscalationState.CREATING:
        # Failed, or done with its link since removed: run it again (every step is idempotent).
        esc.state, esc.error = EscalationState.CREATING, None
    return Queued(esc.id, EscalationState(esc.state), conn.name, esc.repo)


def for_ticket(session: Session, ticket_id: int) -> Escalation | None:
    """The ticket's latest escalation, if it was ever asked for."""
    return session.scalar(select(Escalation).where(Escalation.item_id == str(ticket_id))
                          .order_by(Escalation.id.desc()).limit(1))


def _find(session: Session, connection_id: int, ticket_id: int) -> Escalation | None:
    return session.scalar(select(Escalation).where(Escalation.connection_id == connection_id,
                                                   Escalation.item_id == str(ticket_id)))


def _insert(session: Session, conn: Connection, req: Request) -> Escalation:
    """A new row; or, when a concurrent request inserted it first (the unique constraint
    fires), that one. On PostgreSQL the clash is raised only once the other transaction has
    committed, so the look after it finds the row (SQLite runs one writer at a time)."""
    try:
        with session.begin_nested():
            esc = Escalation(connection_id=conn.id, item_id=str(req.ticket_id), repo=req.repo,
                             state=EscalationState.CREATING,
                             options={"kind": req.kind, "include_comments": req.include_comments,
                                      "attachments": list(req.attachments), "actor": req.actor},
                             uploaded=[])
            session.add(esc)
        return esc
    except IntegrityError:
        esc = _find(session, conn.id, req.ticket_id)
        if esc is None:
            raise
        return esc


def _connection_for(session: Session, req: Request) -> Connection:
    query = select(Connection).join(ConnectionRepo).where(ConnectionRepo.full_name == req.repo)
    if req.connection:
        query = query.where(Connection.name == req.connection)
    if req.within is not None:
        query = query.where(Connection.id.in_(tuple(req.within)))
    found = list(session.scalars(query))
    if not found:
        raise EscalationError(f"no connection syncs {req.repo}" +
                              (f" under the name {req.connection!r}" if req.connection else ""))
    if len(found) > 1:
        raise EscalationError(f"{req.repo} is synced by several connections; name one with connection")
    if found[0].tracker_removed_at is not None:
        raise EscalationError(f"{req.repo}: the Bitbucket issue tracker was removed (410)")
    return found[0]


def _validate(side: Side, req: Request) -> Item:
    ticket = side.read(str(req.ticket_id))  # LookupError: no such ticket
    if req.kind is not None and req.kind not in KINDS:
        raise EscalationError(f"kind must be one of {', '.join(KINDS)}")
    have = set(side.attachment_names(ticket.id))
    missing = [n for n in req.attachments if n not in have]
    if missing:
        raise EscalationError(f"ticket {ticket.id} has no attachment named {', '.join(map(repr, missing))}")
    return ticket
