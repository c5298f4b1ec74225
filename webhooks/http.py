"""Small helpers shared by the JSON APIs: errors, sessions, parameter and body checks."""
from __future__ import annotations

from typing import Any

from flask import current_app, jsonify, request

MAX_LIMIT = 500


class BadInput(ValueError):
    """Bad request input; answered with 400 and this message."""


def error(status: int, message: str):
    return jsonify({"error": message}), status


def sessions():
    return current_app.extensions["bbsync"].sessions


def dispatch(task: str, arg: str | int) -> None:
    current_app.extensions["bbsync"].dispatcher.submit(task, arg)


def positive_int(raw: str | None, name: str) -> int | None:
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 12 or int(raw) == 0:
        raise BadInput(f"{name} must be a positive integer")
    return int(raw)


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
    return value
