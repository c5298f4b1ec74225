"""The simulator's Flask app: Bitbucket's REST API under /2.0, its OAuth authorize page and token
endpoint under /site/oauth2, and the simulator's own control API under /_sim (no auth; not Bitbucket's).

Every /2.0 request passes, in order: injected faults and delays (state.faults), authentication (the
principal becomes the actor of edits and webhooks), the optional rate limit (ratelimit.py),
the route; and is then logged in state.request_log as (method, path, status).
"""
from __future__ import annotations

import base64
import binascii
import time

from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from . import payloads
from .api import bp as api_bp
from .authorize import bp as authorize_bp
from .control import bp as control_bp
from .models import ApiError, User
from .oauth import bp as oauth_bp
from .state import TRACKER_REMOVED_DETAIL, SimulatorState

RATE_LIMIT_TEXT = "Rate limit for this resource has been exceeded"
_FAULT_MESSAGES = {
    401: "Authentication failed.",
    403: "You do not have access to this resource.",
    404: "Resource not found.",
    500: "Something went wrong.",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def create_app(state: SimulatorState | None = None) -> Flask:
    app = Flask(__name__)
    app.extensions["bbsim"] = state if state is not None else SimulatorState()
    app.register_blueprint(api_bp)
    app.register_blueprint(oauth_bp)
    app.register_blueprint(authorize_bp)
    app.register_blueprint(control_bp)
    app.before_request(_guard_api)
    app.after_request(_log_api)
    app.register_error_handler(ApiError, _api_error)
    app.register_error_handler(HTTPException, _http_error)
    return app


def _state() -> SimulatorState:
    return current_app.extensions["bbsim"]


def _is_api(path: str) -> bool:
    return path == "/2.0" or path.startswith("/2.0/")


def _guard_api() -> Response | None:
    if not _is_api(request.path):
        return None
    state = _state()
    status = state.faults.take(request.method, request.path)
    if status is not None:
        return fault_response(status)
    delay = state.faults.take_delay(request.method, request.path)
    if delay:
        time.sleep(delay)
    g.actor = _authenticate(state)
    if request.path.startswith("/2.0/repositories/") and not state.rate_limiter.allow(
            g.actor.uuid, state.rate_limit_per_hour):
        return fault_response(429)
    return None


def fault_response(status: int) -> Response:
    """An injected failure, shaped like Bitbucket's own."""
    if status == 429:
        # Bitbucket's 429 is plain text and carries no Retry-After: clients must back off on
        # their own.
        return Response(RATE_LIMIT_TEXT, status=429, mimetype="text/plain")
    if status == 410:
        body = payloads.error("Issue tracker removed.", detail=TRACKER_REMOVED_DETAIL)
    else:
        body = payloads.error(_FAULT_MESSAGES.get(status, "Error"))
    response = jsonify(body)
    response.status_code = status
    return response


def _authenticate(state: SimulatorState) -> User:
    scheme, _, credential = request.headers.get("Authorization", "").strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() == "basic" and credential:
        try:
            decoded = base64.b64decode(credential, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(401, "Malformed Basic credentials.") from None
        username, _, password = decoded.partition(":")
        if username and password:
            return state.principal_for_basic(username)
    elif scheme.lower() == "bearer" and credential:
        return state.principal_for_bearer(credential)
    raise ApiError(401, "Authentication required.",
                   detail="Send Basic credentials (account email and API token) or an OAuth "
                          "bearer token in the Authorization header.")


def _log_api(response: Response) -> Response:
    if _is_api(request.path):
        _state().log_request(request.method, request.path, response.status_code)
    return response


def _api_error(exc: ApiError) -> tuple[Response, int]:
    return jsonify(payloads.error(exc.message, exc.detail, exc.fields)), exc.status


def _http_error(exc: HTTPException) -> tuple[Response, int] | HTTPException:
    if exc.code is None or exc.code < 400:
        return exc
    return jsonify(payloads.error(exc.name, exc.description)), exc.code
