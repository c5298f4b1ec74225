"""Small helpers shared by the JSON APIs: errors, sessions, parameter and body checks."""
from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, request

from worker.engine.text import clean, has_surrogate

MAX_LIMIT = 500


class BadInput(ValueError):
    """Bad request input; answered with 400 and this message."""


def error(status: int, message: str):
    return jsonify({"error": message}), status


def sessions():
    return current_app.extensions["bbsync"].sessions


def enqueue(task: str, arg: str | int) -> None:
    """Hand task(arg) to the queue (through this process's publishing thread)."""
    current_app.extensions["bbsync"].dispatcher.enqueue(task, arg)


def bitbucket_clients():
    """How an admin request reaches Bitbucket: each connection's own client
    (worker.sync.clients, imported only when one is needed), or a test's, put in as the app's
    `extensions["bbsync_bitbucket"]`. Only the admin's hook operations call Bitbucket."""
    from worker.sync.clients import client_for
    return current_app.extensions.get("bbsync_bitbucket", client_for)


def positive_int(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12 or int(raw) == 0:
        raise BadInput(f"{name} must be a positive integer")
    return int(raw)


def text_param(name: str) -> str | None:
    """A query parameter compared with stored text: one with NUL (`%00`) matches nothing, and
    PostgreSQL would refuse the query."""
    value = request.args.get(name)
    if value is not None and "\x00" in value:
        raise BadInput(f"{name} contains a NUL character")
    return value


def limit_param() -> int:
    return min(positive_int(request.args.get("limit"), "limit") or 100, MAX_LIMIT)


def json_body() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise BadInput("body must be a JSON object")
    return body


def text_field(body: dict, name: str, *, required: bool = False, max_len: int = 65536,
               allow_null: bool = False) -> str | None:
    if name not in body:
        if required:
            raise BadInput(f"{name} is required")
        return None
    value = body[name]
    if value is None and allow_null:
        return None
    if not isinstance(value, str):
        raise BadInput(f"{name} must be a string")
    if required and not value.strip():
        raise BadInput(f"{name} must not be empty")
    if len(value) > max_len:
        raise BadInput(f"{name} is longer than {max_len} characters")
    if "\x00" in value:
        raise BadInput(f"{name} contains a NUL character")
    if has_surrogate(value):
        # The caller is there to fix its input; the worker cleans only what it cannot refuse.
        raise BadInput(f"{name} contains an unpaired UTF-16 surrogate (\\ud800-\\udfff), "
                       f"which is not Unicode text")
    return value


def actor_header() -> str | None:
    """X-Actor, as stored. A header's bytes reach WSGI as latin-1 text: UTF-8 is read as UTF-8
    (a name with accents), anything else stays as it came (every byte reads as some
    character). NUL, which gunicorn refuses but a development server may pass, is removed."""
    raw = request.headers.get("X-Actor", "")
    if not raw.isascii():
        try:
            raw = raw.encode("latin-1").decode("utf-8")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return clean("X-Actor", raw, 255)[0].strip() or None
