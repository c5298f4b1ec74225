"""What the request's token may see of the built-in helpdesk (webhooks/auth.py says who it is).

A ticket belongs to the connection it was made in through the API (`tickets.connection_id`),
or to the connection whose link syncs it; a connection token sees the tickets of its
connections, an admin token every ticket. Something a token may not see answers exactly as
something that does not exist.
"""
from __future__ import annotations

from sqlalchemy import ColumnElement, String, cast, exists, or_, select, true
from sqlalchemy.orm import Session

from webhooks.auth import principal
from webhooks.http import BadInput
from worker import connections
from worker.db.helpdesk import Ticket
from worker.db.models import Connection, Link

LOCAL = "local"


def tickets_seen() -> ColumnElement[bool]:
    """A condition on Ticket: the token may see it."""
    who = principal()
    if who.admin:
        return true()
    ids = tuple(who.connection_ids)
    synced = (exists().where(Link.target_id == cast(Ticket.id, String), Link.connection_id.in_(ids),
                             Connection.id == Link.connection_id, Connection.target == LOCAL)
              .correlate(Ticket))
    return or_(Ticket.connection_id.in_(ids), synced)


def sees_ticket(session: Session, ticket_id: int) -> bool:
    return session.scalar(select(Ticket.id).where(Ticket.id == ticket_id, tickets_seen())) is not None


def connection_named(session: Session, name: str) -> Connection | None:
    """The connection of that name, if the token may see it."""
    conn = connections.get(session, name)
    return conn if conn is not None and principal().sees(conn.id) else None


def owner_for_new_ticket(session: Session, name: str | None) -> int | None:
    """The connection a ticket made now belongs to: the one named (the token must see it), or a
    one-connection token's own; an admin may leave it unnamed (the ticket is then admins')."""
    who = principal()
    if name is not None:
        conn = connection_named(session, name)
        if conn is None:
            raise LookupError(f"unknown connection {name!r}")
        return conn.id
    if who.admin:
        return None
    if len(who.connection_ids) == 1:
        return next(iter(who.connection_ids))
    raise BadInput("connection is required: this token sees several connections")


def escalation_scope(session: Session, ticket_id: int) -> frozenset[int] | None:
    """The connections a ticket may be escalated through: the token's, and the ticket's own if
    it has one (None: any)."""
    who = principal()
    owner = session.scalar(select(Ticket.connection_id).where(Ticket.id == ticket_id))
    scope = None if who.admin else who.connection_ids
    if owner is not None:
        scope = frozenset({owner}) if scope is None else scope & {owner}
    return scope
