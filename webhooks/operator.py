"""The operator's API: the ledger, stored deliveries, and conflicts awaiting a person."""
from __future__ import annotations

from flask import Blueprint, jsonify, request
from sqlalchemy import func, select

from webhooks.auth import principal
from webhooks.http import (BadInput, actor_header, enqueue, error, json_body, limit_param, positive_int,
                           sessions, text_field)
from worker import connections
from worker.db import ledger
from worker.db.models import Delivery
from worker.engine.events import MAX_ID
from worker.engine.states import ConflictState, DeliveryStatus
from worker.sync import conflicts

bp = Blueprint("operator", __name__, url_prefix="/api")

DELIVERY_STATUSES = tuple(DeliveryStatus)
CONFLICT_STATES = tuple(ConflictState)


@bp.errorhandler(BadInput)
def _bad_input(exc: BadInput):
    return error(400, str(exc))


def _connection(session):
    """The connection named by `?connection=`, if the token may see it: one it may not see
    answers as one that does not exist."""
    name = request.args.get("connection")
    if not name:
        raise BadInput("connection is required")
    conn = connections.get(session, name)
    return (conn if conn is not None and principal().sees(conn.id) else None), name


@bp.get("/ledger")
def get_ledger():
    limit, before = limit_param(), positive_int(request.args.get("before"), "before")
    with sessions()() as session:
        conn, name = _connection(session)
        if conn is None:
            return error(404, f"unknown connection {name!r}")
        rows = ledger.entries(session, conn.id, limit=limit, before_id=before)
        return jsonify({"entries": [ledger.as_dict(e) for e in rows]})


@bp.get("/deliveries")
def list_deliveries():
    """Stored webhook deliveries of a connection, newest first, with counts by status."""
    status = request.args.get("status")
    if status is not None and status not in DELIVERY_STATUSES:
        raise BadInput(f"status must be one of {', '.join(DELIVERY_STATUSES)}")
    limit = limit_param()
    with sessions()() as session:
        conn, name = _connection(session)
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


@bp.post("/deliveries/<delivery_id>/<action>")
def act_on_delivery(delivery_id: str, action: str):
    """Replay a failed delivery once its cause is fixed, or dismiss it."""
    from worker.sync import deliveries as store
    if action not in ("replay", "dismiss"):
        return error(404, f"unknown action {action!r}: replay or dismiss")
    if not delivery_id.isalnum() or len(delivery_id) > 32:
        return error(404, f"delivery {delivery_id!r} does not exist")
    who = actor_header()
    try:
        with sessions().begin() as session:
            if not principal().sees(session.scalar(select(Delivery.connection_id).where(Delivery.id == delivery_id))):
                raise LookupError(f"delivery {delivery_id} does not exist")
            ids = (store.replay if action == "replay" else store.dismiss)(session, delivery_id, who)
    except LookupError as exc:
        return error(404, str(exc))
    except store.DeliveryError as exc:
        return error(409, str(exc))
    for i in ids:
        enqueue("process_delivery", i)
    return jsonify({"delivery": delivery_id, "action": action, "queued": ids})


@bp.get("/outbox")
def outbox_counts():
    """Writes waiting for, or done being, made to each side: counts by state (`counts`, all
    sides) and by side and state (`sides`: `bitbucket`, and `target` for a remote target)."""
    from worker.db.models import OutboxEntry
    with sessions()() as session:
        conn, name = _connection(session)
        if conn is None:
            return error(404, f"unknown connection {name!r}")
        rows = session.execute(select(OutboxEntry.side, OutboxEntry.state, func.count()).where(
            OutboxEntry.connection_id == conn.id).group_by(OutboxEntry.side, OutboxEntry.state)).all()
        counts: dict[str, int] = {}
        sides: dict[str, dict[str, int]] = {}
        for side, state, count in rows:
            counts[state] = counts.get(state, 0) + count
            sides.setdefault(side, {})[state] = count
        return jsonify({"counts": counts, "sides": sides})


@bp.get("/conflicts")
def list_conflicts():
    state = request.args.get("state")
    if state is not None and state not in CONFLICT_STATES:
        raise BadInput(f"state must be one of {', '.join(CONFLICT_STATES)}")
    with sessions()() as session:
        conn, name = _connection(session)
        if conn is None:
            return error(404, f"unknown connection {name!r}")
        return jsonify({"conflicts": [conflicts.as_dict(c, link)
                                      for c, link in conflicts.listing(session, conn.id, state)]})


@bp.post(f"/conflicts/<int(max={MAX_ID}):conflict_id>/resolve")
def resolve_conflict(conflict_id: int):
    body = json_body()
    take = text_field(body, "take", required=True, max_len=16)
    value = text_field(body, "value", max_len=65536)
    who = text_field(body, "resolved_by", max_len=255) or actor_header()
    try:
        with sessions().begin() as session:
            from worker.db.models import Conflict
            if not principal().sees(session.scalar(select(Conflict.connection_id).where(Conflict.id == conflict_id))):
                raise LookupError(f"conflict {conflict_id} does not exist")
            push = conflicts.resolve(session, conflict_id, take, value, who)
    except LookupError as exc:
        return error(404, str(exc))
    except conflicts.ResolutionError as exc:
        return error(409 if "already" in str(exc) else 400, str(exc))
    if push is not None:
        enqueue("push_link", push)
    with sessions()() as session:
        from worker.db.models import Conflict, Link
        c = session.get(Conflict, conflict_id)
        return jsonify(conflicts.as_dict(c, session.get(Link, c.link_id)))
