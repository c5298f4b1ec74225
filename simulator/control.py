"""The simulator's own control API under /_sim (not Bitbucket's; no auth).

    POST   /_sim/faults           {"status": 429, "times": 3, "method": "GET", "path": "regex"}
                                  or {"drop_webhooks": N}
    GET    /_sim/faults           what is still queued
    DELETE /_sim/faults
    POST   /_sim/tracker-removed  {"repo": "ws/slug"}: its issue endpoints answer 410 from now on
    GET    /_sim/requests         the /2.0 request log with counts;  DELETE clears it
    GET    /_sim/deliveries       webhook delivery attempts; ?wait=S waits for the queue first
    GET    /_sim/events           webhook events fired (with their payloads)
    POST   /_sim/settings         {"token_ttl": seconds, "rate_limit_per_hour": N or null,
                                   "oauth_consent": "grant" or "deny"}
    POST   /_sim/consumers        {"client_id", "client_secret", "callback_url"}: an OAuth consumer
    POST   /_sim/tokens/expire    every issued access token expires now
    POST   /_sim/reset            forget everything
    GET    /_sim/download/<token> one-time attachment download (where attachment GETs redirect)
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from urllib.parse import quote

from flask import Blueprint, Response, current_app, jsonify, request

from .authorize import CONSENTS

bp = Blueprint("control", __name__, url_prefix="/_sim")


def _state():
    return current_app.extensions["bbsim"]


def _bad(message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), 400


@bp.post("/faults")
def add_fault():
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        return _bad("expected a JSON object")
    faults = _state().faults
    try:
        if "drop_webhooks" in body:
            faults.drop_webhooks(int(body["drop_webhooks"]))
        elif "delay" in body:
            faults.slow(float(body["delay"]), times=int(body.get("times", 1)),
                        method=body.get("method"), path=body.get("path"))
        else:
            faults.add(status=int(body.get("status", 0)), times=int(body.get("times", 1)),
                       method=body.get("method"), path=body.get("path"))
    except (TypeError, ValueError) as exc:
        return _bad(str(exc))
    return jsonify(faults.pending()), 201


@bp.get("/faults")
def list_faults():
    return jsonify(_state().faults.pending())


@bp.delete("/faults")
def clear_faults():
    _state().faults.clear()
    return Response(status=204)


@bp.post("/tracker-removed")
def tracker_removed():
    body = request.get_json(silent=True)
    repo = body.get("repo") if isinstance(body, dict) else None
    if not isinstance(repo, str) or repo.count("/") != 1:
        return _bad('expected {"repo": "workspace/slug"}')
    _state().remove_tracker(repo)
    return jsonify({"removed": repo})


@bp.get("/requests")
def requests_log():
    log = list(_state().request_log)
    return jsonify({
        "count": len(log),
        "by_status": dict(Counter(str(entry.status) for entry in log)),
        "by_method": dict(Counter(entry.method for entry in log)),
        "requests": [entry._asdict() for entry in log],
    })


@bp.delete("/requests")
def clear_requests_log():
    state = _state()
    with state.lock:
        state.request_log.clear()
    return Response(status=204)


@bp.get("/deliveries")
def deliveries():
    state = _state()
    wait = request.args.get("wait", type=float)
    idle = state.wait_for_deliveries(timeout=wait) if wait else None
    return jsonify({"idle": idle, "deliveries": [asdict(d) for d in state.deliveries]})


@bp.get("/events")
def events():
    return jsonify({"events": [asdict(e) for e in list(_state().events)]})


@bp.post("/settings")
def settings():
    body = request.get_json(silent=True)
    state = _state()
    if not isinstance(body, dict):
        return _bad("expected a JSON object")
    if "token_ttl" in body:
        ttl = body["token_ttl"]
        if not isinstance(ttl, (int, float)) or ttl < 0:
            return _bad("token_ttl must be a number of seconds, at least 0")
        state.token_ttl = ttl
    if "rate_limit_per_hour" in body:
        limit = body["rate_limit_per_hour"]
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            return _bad("rate_limit_per_hour must be a positive integer or null")
        state.rate_limit_per_hour = limit
    if "oauth_consent" in body:
        if body["oauth_consent"] not in CONSENTS:
            return _bad(f"oauth_consent must be one of {', '.join(CONSENTS)}")
        state.consumers.consent = body["oauth_consent"]
    return jsonify({"token_ttl": state.token_ttl,
                    "rate_limit_per_hour": state.rate_limit_per_hour,
                    "oauth_consent": state.consumers.consent})


@bp.post("/consumers")
def add_consumer():
    body = request.get_json(silent=True)
    fields = ("client_id", "client_secret", "callback_url")
    if not isinstance(body, dict) or not all(isinstance(body.get(f), str) for f in fields):
        return _bad('expected {"client_id", "client_secret", "callback_url"}')
    try:
        consumer = _state().consumers.add(*(body[f] for f in fields))
    except ValueError as exc:
        return _bad(str(exc))
    return jsonify({"client_id": consumer.client_id, "callback_url": consumer.callback_url}), 201


@bp.post("/tokens/expire")
def expire_tokens():
    _state().tokens.expire_all()
    return Response(status=204)


@bp.post("/reset")
def reset():
    _state().reset()
    return Response(status=204)


@bp.get("/download/<token>")
def download(token: str):
    found = _state().take_download(token)
    if found is None:
        return jsonify({"error": "This download link has expired or was already used."}), 404
    data, content_type, name = found
    response = Response(data, mimetype=content_type)
    response.headers["Content-Disposition"] = f"attachment; filename*=UTF-8''{quote(name)}"
    return response
