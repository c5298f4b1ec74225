"""The built-in helpdesk's REST API: tickets, comments, attachments, escalation.

Every edit is recorded with its outbox row in one transaction; the push to
Bitbucket is queued after the commit. An escalation likewise: the request is checked and
recorded, and a worker creates the issue. No request here ever calls Bitbucket.
"""
from __future__ import annotations

import dataclasses

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import String, cast, select
from sqlalchemy.orm import selectinload

from config.enums import TARGET
from webhooks import scope
from webhooks.http import (BadInput, actor_header, enqueue, error, json_body, limit_param,
                           positive_int, sessions, text_field, text_param)
from worker.db.helpdesk import Ticket, TicketAttachment, TicketComment
from worker.db.models import Escalation, Link, utcnow
from worker.engine.events import MAX_ID, SYNCED_FIELDS
from worker.sync import escalation_request as escalation
from worker.sync import reverse, reverse_comments
from worker.targets.local import LocalHelpdesk

bp = Blueprint("tickets", __name__, url_prefix="/api/tickets")

EDITABLE = SYNCED_FIELDS
MAX_ATTACHMENT_BYTES = 10 * 1024 * 1024


def ticket_json(ticket: Ticket, link: Link | None) -> dict:
    """A ticket, with its Bitbucket link (null until it has one)."""
    return {
        "id": ticket.id, "title": ticket.title, "description": ticket.description,
        "status": ticket.status, "priority": ticket.priority, "type": ticket.type,
        "assignee": ticket.assignee, "reporter": ticket.reporter,
        "created_at": ticket.created_at.isoformat(), "updated_at": ticket.updated_at.isoformat(),
        "comments": [{"id": c.id, "body": c.body, "internal": c.internal, "author": c.author,
                      "created_at": c.created_at.isoformat()} for c in ticket.comments],
        "attachments": [{"name": a.name, "content_type": a.content_type, "size": len(a.data)}
                        for a in ticket.attachments],
        "bitbucket": None if link is None else {
            "repo": link.bitbucket_repo, "issue_id": link.bitbucket_issue_id, "url": link.bitbucket_url},
    }


@bp.errorhandler(BadInput)
def _bad_input(exc: BadInput):
    return error(400, str(exc))


def _fields(body: dict, *, creating: bool) -> dict:
    unknown = sorted(set(body) - set(EDITABLE) - {"reporter", "requester", "connection"})
    if unknown:
        raise BadInput(f"unknown field(s): {', '.join(unknown)}")
    values = {}
    for name in EDITABLE:
        if name not in body:
            continue
        if name in TARGET:
            if body[name] not in TARGET[name]:
                raise BadInput(f"{name} must be one of {', '.join(TARGET[name])}")
            values[name] = body[name]
        elif name == "title":
            values[name] = text_field(body, name, required=True, max_len=255)
        elif name == "assignee":
            values[name] = text_field(body, name, max_len=255, allow_null=True)
        else:
            values[name] = text_field(body, name)
    if creating and "title" not in values:
        raise BadInput("title is required")
    if not creating and not values:
        raise BadInput(f"nothing to change: give one of {', '.join(EDITABLE)}")
    return values


@bp.get("")
def list_tickets():
    repo = text_param("bitbucket_repo")
    connection_name = request.args.get("connection")
    issue_id = positive_int(request.args.get("bitbucket_issue"), "bitbucket_issue")
    limit = limit_param()
    if issue_id is not None and not repo:
        raise BadInput("bitbucket_issue needs bitbucket_repo")
    with sessions()() as session:
        conn = None
        if connection_name is not None:
            conn = scope.connection_named(session, connection_name)
            if conn is None:
                return error(404, f"unknown connection {connection_name!r}")
        query = (select(Ticket, Link).outerjoin(Link, Link.target_id == cast(Ticket.id, String))
                 .where(scope.tickets_seen())
                 .options(selectinload(Ticket.comments), selectinload(Ticket.attachments))
                 .order_by(Ticket.id).limit(limit))
        if repo:
            query = query.where(Link.bitbucket_repo == repo)
        if issue_id is not None:
            query = query.where(Link.bitbucket_issue_id == issue_id)
        if conn is not None:
            query = query.where(Link.connection_id == conn.id)
        return jsonify({"tickets": [ticket_json(t, link) for t, link in session.execute(query).all()]})


def _load(session, ticket_id: int) -> tuple[Ticket | None, Link | None]:
    ticket = session.get(Ticket, ticket_id, options=[selectinload(Ticket.comments),
                                                     selectinload(Ticket.attachments)])
    link = session.scalar(select(Link).where(Link.target_id == str(ticket_id))) if ticket else None
    return ticket, link


def escalation_json(esc: Escalation | None) -> dict | None:
    """Where the ticket's escalation stands: `creating` (queued or running; `error` is the last
    attempt's, which a retry will follow), `done` (the link is under `bitbucket`) or `failed`
    (`error` says why; escalating again resumes it)."""
    return None if esc is None else {"id": esc.id, "state": esc.state, "repo": esc.repo, "error": esc.error}


@bp.get(f"/<int(max={MAX_ID}):ticket_id>")
def get_ticket(ticket_id: int):
    with sessions()() as session:
        ticket, link = _load(session, ticket_id)
        if ticket is None or not scope.sees_ticket(session, ticket_id):
            return error(404, f"ticket {ticket_id} does not exist")
        return jsonify({**ticket_json(ticket, link),
                        "escalation": escalation_json(escalation.for_ticket(session, ticket_id))})


@bp.post("")
def create_ticket():
    body = json_body()
    values = _fields(body, creating=True)
    reporter = text_field(body, "reporter", max_len=255) or text_field(body, "requester", max_len=255)
    name = text_field(body, "connection", max_len=64)
    with sessions().begin() as session:
        try:
            owner = scope.owner_for_new_ticket(session, name)
        except LookupError as exc:
            return error(404, str(exc))
        ticket = Ticket(reporter=reporter, connection_id=owner, **values)
        session.add(ticket)
        session.flush()
        ticket_id = ticket.id
    with sessions()() as session:
        ticket, link = _load(session, ticket_id)
        return jsonify(ticket_json(ticket, link)), 201


@bp.patch(f"/<int(max={MAX_ID}):ticket_id>")
def update_ticket(ticket_id: int):
    values = _fields(json_body(), creating=False)
    actor = actor_header()
    with sessions().begin() as session:
        if not scope.sees_ticket(session, ticket_id):
            return error(404, f"ticket {ticket_id} does not exist")
        # Same lock order as the worker (link, then ticket), or the two could deadlock.
        session.scalars(select(Link.id).where(Link.target_id == str(ticket_id)).with_for_update(key_share=True)).all()
        ticket = session.scalar(select(Ticket).where(Ticket.id == ticket_id).with_for_update())
        if ticket is None:
            return error(404, f"ticket {ticket_id} does not exist")
        changed = [f for f, v in values.items() if getattr(ticket, f) != v]
        for f in changed:
            setattr(ticket, f, values[f])
        if changed:
            ticket.updated_at = utcnow()
        links = reverse.record_ticket_edit(session, ticket.id, changed, actor)
    for link_id in links:
        enqueue("push_link", link_id)
    with sessions()() as session:
        ticket, link = _load(session, ticket_id)
        return jsonify(ticket_json(ticket, link))


@bp.post(f"/<int(max={MAX_ID}):ticket_id>/comments")
def add_comment(ticket_id: int):
    body = json_body()
    text = text_field(body, "body", required=True)
    author = text_field(body, "author", max_len=255)
    internal = body.get("internal", False)
    if not isinstance(internal, bool):
        raise BadInput("internal must be true or false")
    with sessions().begin() as session:
        if not scope.sees_ticket(session, ticket_id):
            return error(404, f"ticket {ticket_id} does not exist")
        comment = TicketComment(ticket_id=ticket_id, body=text, internal=internal, author=author)
        session.add(comment)
        session.flush()
        links = reverse_comments.record_ticket_comment(session, LocalHelpdesk(session).get_comment(str(comment.id)))
        result = {"id": comment.id, "body": comment.body, "internal": comment.internal,
                  "author": comment.author, "created_at": comment.created_at.isoformat()}
    for link_id in links:
        enqueue("push_link", link_id)
    return jsonify(result), 201


@bp.post(f"/<int(max={MAX_ID}):ticket_id>/attachments")
def upload_attachments(ticket_id: int):
    files = request.files.getlist("files") or list(request.files.values())
    if not files:
        raise BadInput("send one or more files as multipart/form-data")
    stored = []
    with sessions().begin() as session:
        if not scope.sees_ticket(session, ticket_id):
            return error(404, f"ticket {ticket_id} does not exist")
        for f in files:
            name = (f.filename or "").replace("\\", "/").rsplit("/", 1)[-1]
            if not name or len(name) > 255 or "\x00" in name or name in (".", ".."):
                raise BadInput("every file needs a plain file name")
            data = f.read(MAX_ATTACHMENT_BYTES + 1)
            if len(data) > MAX_ATTACHMENT_BYTES:
                return error(413, f"{name} is over {MAX_ATTACHMENT_BYTES} bytes")
            row = session.scalar(select(TicketAttachment).where(
                TicketAttachment.ticket_id == ticket_id, TicketAttachment.name == name))
            if row is None:
                row = TicketAttachment(ticket_id=ticket_id, name=name)
                session.add(row)
            row.data, row.content_type = data, (f.mimetype or "application/octet-stream")[:127]
            stored.append({"name": name, "size": len(data), "content_type": row.content_type})
    return jsonify({"attachments": stored}), 201


@bp.get(f"/<int(max={MAX_ID}):ticket_id>/attachments/<path:name>")
def download_attachment(ticket_id: int, name: str):
    with sessions()() as session:
        row = session.scalar(select(TicketAttachment).where(
            TicketAttachment.ticket_id == ticket_id, TicketAttachment.name == name))
        if row is None or not scope.sees_ticket(session, ticket_id):
            return error(404, f"ticket {ticket_id} has no attachment {name!r}")
        return Response(row.data, mimetype=row.content_type,
                        headers={"Content-Disposition": f"attachment; filename*=UTF-8''{_quote(name)}"})


def _quote(name: str) -> str:
    from urllib.parse import quote
    return quote(name, safe="")


@bp.post(f"/<int(max={MAX_ID}):ticket_id>/escalate")
def escalate(ticket_id: int):
    """Ask for the ticket to become a Bitbucket issue. `202` with the escalation (a worker
    creates the issue; `GET /api/tickets/ID` shows its state, then the link); `200` with the
    link when the ticket is already escalated. Nothing is recorded for a request refused."""
    body = json_body()
    repo = text_field(body, "repo", required=True, max_len=201)
    attachments = body.get("attachments", [])
    if not isinstance(attachments, list) or not all(isinstance(a, str) for a in attachments):
        raise BadInput("attachments must be a list of file names")
    include = body.get("include_comments", False)
    if not isinstance(include, bool):
        raise BadInput("include_comments must be true or false")
    req = escalation.Request(
        ticket_id=ticket_id, repo=repo, connection=text_field(body, "connection", max_len=64),
        kind=text_field(body, "kind", max_len=32), include_comments=include,
        attachments=tuple(dict.fromkeys(attachments)),
        actor=actor_header())
    try:
        with sessions().begin() as session:
            if not scope.sees_ticket(session, ticket_id):
                return error(404, f"ticket {ticket_id} does not exist")
            req = dataclasses.replace(req, within=scope.escalation_scope(session, ticket_id))
            outcome = escalation.request_escalation(session, req)
    except LookupError as exc:
        return error(404, str(exc))
    except escalation.EscalationError as exc:
        return error(400, str(exc))
    if isinstance(outcome, escalation.Result):
        return jsonify({"connection": outcome.connection, "repo": outcome.repo, "issue_id": outcome.issue_id,
                        "url": outcome.url, "created": outcome.created}), 200
    enqueue("escalate", outcome.escalation_id)  # after the commit: the task must find its row
    location = f"/api/tickets/{ticket_id}"
    return jsonify({"escalation": {"id": outcome.escalation_id, "state": outcome.state,
                                   "connection": outcome.connection, "repo": outcome.repo},
                    "ticket": location}), 202, {"Location": location}
