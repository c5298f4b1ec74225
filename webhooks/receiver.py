"""POST /webhooks/bitbucket/<connection>: verify, store, enqueue, answer. Nothing else.

No remote call happens here and no sync work: Bitbucket waits only 10 s and retries only on
5xx, so the receiver's one job is to make the delivery durable and say so (promise 1).
"""
from __future__ import annotations

import hashlib
import logging
import re
import uuid

import orjson

from flask import Blueprint, current_app, jsonify, request

from webhooks import signatures
from worker.db import ledger
from worker.db.models import utcnow
from worker.engine.events import ISSUE_EVENTS, issue_key, quick_check
from worker.engine.states import Direction, Outcome
from worker.sync.deliveries import insert_rows

log = logging.getLogger("bbsync.webhooks")
bp = Blueprint("receiver", __name__)

#: A UUID as Bitbucket writes it in a header, braces and all; anything else is not an id.
UUID_HEADER = re.compile(r"\{?[0-9a-fA-F-]{1,62}\}?")


def error(status: int, message: str):
    return jsonify({"error": message}), status


def _read_body(environ: dict, limit: int) -> bytes | None:
    """The request body, or None when it is over `limit` bytes; read as werkzeug's
    request.stream reads it. A server that ends the input itself (gunicorn, at Content-Length
    or at a chunked body's last chunk) says so in wsgi.input_terminated; otherwise only a
    Content-Length says where the body ends, and without one there is no body."""
    declared = _declared_length(environ)
    if declared is not None and declared > limit:
        return None
    stream = environ["wsgi.input"]
    if "wsgi.input_terminated" in environ:
        body = stream.read(limit + 1)  # one byte more than allowed tells whether it is over
    elif declared is not None:
        body = stream.read(declared)
    else:
        return b""
    return None if len(body) > limit else body


def _declared_length(environ: dict) -> int | None:
    """Content-Length as werkzeug reads it: None when absent or chunked, 0 when not a number."""
    if "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower():
        return None
    value = environ.get("CONTENT_LENGTH")
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isascii() and value.isdigit() else 0


def _header_id(environ: dict, key: str) -> str | None:
    value = environ.get(key)
    if value and UUID_HEADER.fullmatch(value):
        return value.strip("{}").lower()
    return None


@bp.post("/webhooks/bitbucket/<name>")
def receive(name: str):
    ext = current_app.extensions["bbsync"]
    limit = ext.settings.max_body_bytes
    # Headers and body straight from the WSGI environ: on this path, each request.headers
    # lookup cost more than the HMAC (a proxy, a header-name translation, a dict view per call),
    # and request.stream and request.content_length together cost twice the JSON parse.
    environ = request.environ
    body = _read_body(environ, limit)
    if body is None:
        return error(413, f"body over the {limit}-byte limit")

    conn = ext.directory.get(name)
    if conn is None:
        return error(404, f"unknown connection {name!r}")
    signature = environ.get("HTTP_X_HUB_SIGNATURE")
    if not signatures.verify(signature, body, conn.secrets):
        fresh = ext.directory.reload_if_due(conn)
        if fresh is None or not signatures.verify(signature, body, fresh.secrets):
            log.warning("webhook.signature_invalid connection=%s present=%s", name, bool(signature))
            return error(401, "missing or invalid X-Hub-Signature")

    event_key = environ.get("HTTP_X_EVENT_KEY", "").strip()
    if not event_key or len(event_key) > 64:
        return error(400, "missing X-Event-Key header")
    if "\x00" in event_key:  # gunicorn refuses it; a development server may not
        return error(400, "X-Event-Key contains a NUL character")
    try:
        # orjson: about a third of the stdlib's CPU on a 4 KB payload, and stricter where the
        # stdlib would let trouble through to the worker: a lone surrogate (which PostgreSQL
        # cannot store), NaN, a byte-order mark, nesting past 1024 levels.
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return error(400, "body is not valid JSON")
    problem = quick_check(event_key, payload)
    if problem:
        return error(400, f"malformed {event_key} payload: {problem}")

    # Bitbucket always sends X-Request-UUID; without one, the body's hash still de-duplicates.
    request_uuid = (_header_id(environ, "HTTP_X_REQUEST_UUID")
                    or "sha256:" + hashlib.sha256(body).hexdigest()[:56])
    ignored = event_key not in ISSUE_EVENTS
    delivery_id, fresh_row = _store(ext, environ, conn.id, request_uuid, event_key, body, ignored,
                                    issue_key(payload))
    if fresh_row and not ignored:
        ext.dispatcher.enqueue("process_delivery", delivery_id)  # after commit: the task must find its row
    log.info("webhook.%s connection=%s delivery=%s event=%s", "accepted" if fresh_row else "duplicate",
             name, delivery_id, event_key)
    # Written by hand, the same bytes jsonify would give: the id is our own 32 hex digits, and
    # on this path jsonify cost more CPU than anything but the insert (py-spy, bench/ingest).
    return current_app.response_class(f'{{"delivery":"{delivery_id}"}}\n', status=202,
                                      mimetype="application/json")


def _store(ext, environ: dict, connection_id: int, request_uuid: str, event_key: str, body: bytes,
           ignored: bool, key: str | None) -> tuple[str, bool]:
    """Insert the delivery and commit. Returns (id, True) or, for a duplicate, (existing id, False).

    The unique key on (connection, X-Request-UUID) makes concurrent duplicates safe. Deliveries
    to sync go through the process's DeliveryWriter, which commits concurrent requests together;
    an ignored event also writes a ledger row, so it takes a transaction of its own.
    """
    row = dict(
        id=uuid.uuid4().hex, connection_id=connection_id, request_uuid=request_uuid,
        hook_uuid=_header_id(environ, "HTTP_X_HOOK_UUID"), event_key=event_key,
        attempt=_attempt(environ.get("HTTP_X_ATTEMPT_NUMBER")),
        body=body.decode("utf-8"), status="ignored" if ignored else "received",
        error=f"event {event_key} is not synced" if ignored else None, received_at=utcnow(),
        issue_key=key, runs=0,
    )
    if not ignored:
        return ext.deliveries.write(row)
    with ext.engine.begin() as conn:
        (delivery_id, fresh), = insert_rows(conn, [row])
        if fresh:
            ledger.record(conn, connection_id=connection_id, direction=Direction.FORWARD, outcome=Outcome.IGNORED,
                          delivery_id=delivery_id, detail=f"event {event_key} is not synced by this product")
    return delivery_id, fresh


def _attempt(header: str | None) -> int:
    if header is None:
        return 1
    try:
        return max(1, min(int(header), 100))
    except ValueError:
        return 1
