"""The local helpdesk's REST API (tickets) and the operator's view of the ledger."""
from __future__ import annotations

from flask import Blueprint, current_app, jsonify, request
from sqlalchemy import String, cast, func, select
from sqlalchemy.orm import selectinload

from worker import connections, ledger
from worker.db.models import Delivery, Link, Ticket

bp = Blueprint("api", __name__, url_prefix="/api")

MAX_LIMIT = 500
DELIVERY_STATUSES = ("received", "processed", "ignored", "failed")


def error(status: int, message: str):
    return jsonify({"error": message}), status


def _sessions():
    return current_app.extensions["bbsync"].sessions


def ticket_json(ticket: Ticket, link: Link | None) -> dict:
    return {
        "id": ticket.id, "title": ticket.title, "description": ticket.description,
        "status": ticket.status, "priority": ticket.priority, "type": ticket.type,
        "assignee": ticket.assignee, "reporter": ticket.reporter,
        "created_at": ticket.created_at.isoformat(), "updated_at": ticket.updated_at.isoformat(),
        "comments": [{"id": c.id, "body": c.body, "internal": c.internal, "author": c.author,
                      "created_at": c.created_at.isoformat()} for c in ticket.comments],
        "bitbucket": None if link is None else {
            "repo": link.bitbucket_repo, "issue_id": link.bitbucket_issue_id, "url": link.bitbucket_url},
    }


def _positive_int(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12:
        raise ValueError(f"{name} must be a positive integer")
    return int(raw)


@bp.get("/tickets")
def list_tickets():
    repo = request.args.get("bitbucket_repo")
    connection_name = request.args.get("connection")
    try:
        issue_id = _positive_int(request.args.get("bitbucket_issue"), "bitbucket_issue")
        limit = min(_positive_int(request.args.get("limit"), "limit") or 100, MAX_LIMIT)
    except ValueError as exc:
        return error(400, str(exc))
    if issue_id is not None and not repo:
        return error(400, "bitbucket_issue needs bitbucket_repo")
    with _sessions()() as session:
        conn = None
        if connection_name is not None:
            conn = connections.get(session, connection_name)
            if conn is None:
                return error(404, f"unknown connection {connection_name!r}")
        query = (select(Ticket, Link).outerjoin(Link, Link.target_id == cast(Ticket.id, String))
                 .options(selectinload(Ticket.comments)).order_by(Ticket.id).limit(limit))
        if repo:
            query = query.where(Link.bitbucket_repo == repo)
        if issue_id is not None:
            query = query.where(Link.bitbucket_issue_id == issue_id)
        if conn is not None:
            query = query.where(Link.connection_id == conn.id)
        rows = session.execute(query).all()
        return jsonify({"tickets": [ticket_json(t, link) for t, link in rows]})


@bp.get("/tickets/<int:ticket_id>")
def get_ticket(ticket_id: int):
    with _sessions()() as session:
        ticket = session.get(Ticket, ticket_id, options=[selectinload(Ticket.comments)])
        if ticket is None:
            return error(404, f"ticket {ticket_id} does not exist")
        link = session.scalar(select(Link).where(Link.target_id == str(ticket_id)))
        return jsonify(ticket_json(ticket, link))


@bp.get("/ledger")
def get_ledger():
    name = request.args.get("connection")
    if not name:
        return error(400, "connection is required")
    try:
        limit = min(_positive_int(request.args.get("limit"), "limit") or 100, MAX_LIMIT)
        before = _positive_int(request.args.get("before"), "before")
    except ValueError as exc:
        return error(400, str(exc))
    with _sessions()() as session:
        conn = connections.get(session, name)
        if conn is None:
            return error(404, f"unknown connection {name!r}")
        rows = ledger.entries(session, conn.id, limit=limit, before_id=before)
        return jsonify({"entries": [ledger.as_dict(e) for e in rows]})


@bp.get("/deliveries")
def list_deliveries():
    """Stored webhook deliveries of a connection, newest first, with counts by status."""
    name = request.args.get("connection")
    status = request.args.get("status")
    if not name:
        return error(400, "connection is required")
    if status is not None and status not in DELIVERY_STATUSES:
        return error(400, f"status must be one of {', '.join(DELIVERY_STATUSES)}")
    try:
        limit = min(_positive_int(request.args.get("limit"), "limit") or 100, MAX_LIMIT)
    except ValueError as exc:
        return error(400, str(exc))
    with _sessions()() as session:
        conn = connections.get(session, name)
        if conn is None:
            return error(404, f"unknown connection {name!r}")
        counts = dict(session.execute(select(Delivery.status, func.count()).where(
            Delivery.connection_id == conn.id).group_by(Delivery.status)).all())
        query = select(Delivery).where(Delivery.connection_id == conn.id)
        if status:
            query = query.where(Delivery.status == status)
        rows = session.scalars(query.order_by(Delivery.received_at.desc()).limit(limit))
        return jsonify({"counts": counts, "deliveries": [{
            "id": d.id, "event": d.event_key, "status": d.status, "error": d.error,
            "attempt": d.attempt, "request_uuid": d.request_uuid,
            "received_at": d.received_at.isoformat(),
            "processed_at": d.processed_at.isoformat() if d.processed_at else None,
        } for d in rows]})
