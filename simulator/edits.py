"""Issue edits: validating request bodies, and recording what an edit changed.

An edit arrives in one of two forms and is validated into one internal form, a dict of
field -> new value:
- an issue body (POST/PUT .../issues[/{id}]): `{"state": "open", "assignee": {...}}`;
- a change body (POST .../issues/{id}/changes): `{"changes": {"state": {"new": "open"}}}`.
What it changed is then written out twice, differently, as Bitbucket does:
- the REST change record (`state` key; old/new are strings, "" for unset; assignee as
  username plus `assignee_account_id`);
- the webhook `changes` object (`status` key for the state; assignee old/new are whole user
  objects or null).
"""
from __future__ import annotations

from typing import Any

from . import payloads
from .models import KINDS, MARKUPS, PRIORITIES, STATES, ApiError, User

ENUMS = {"state": STATES, "kind": KINDS, "priority": PRIORITIES}
TRACKER_OBJECTS = ("component", "milestone", "version")
USER_KEYS = ("uuid", "account_id", "username", "nickname")
# Keys a change body may carry. `assignee` (a username) is deprecated in favour of
# `assignee_account_id`, but still accepted.
CHANGE_KEYS = ("state", "kind", "priority", "title", "content", "assignee",
               "assignee_account_id", "component", "milestone", "version")


def bad_request(fields: dict[str, list[str]]) -> ApiError:
    return ApiError(400, "Bad request", fields=fields)


def _check(field: str, value: Any, errors: dict[str, list[str]]) -> Any:
    """Validate one issue-body field; returns its internal value."""
    if field == "title":
        if not isinstance(value, str) or not value.strip():
            errors[field] = ["title must be a non-empty string"]
        return value
    if field in ENUMS:
        if value not in ENUMS[field]:
            errors[field] = [f"{value!r} is not a valid choice: {', '.join(ENUMS[field])}"]
        return value
    if field == "content":
        if value is None:
            return {"raw": ""}
        if not isinstance(value, dict) or not isinstance(value.get("raw", ""), (str, type(None))):
            errors[field] = ["content must be an object with a string raw"]
            return value
        markup = value.get("markup", "markdown")
        if markup not in MARKUPS:
            errors[field] = [f"{markup!r} is not a valid markup: {', '.join(MARKUPS)}"]
        return {"raw": value.get("raw") or "", "markup": markup}
    if field == "assignee":
        if value is None:
            return None
        if not isinstance(value, dict) or not any(isinstance(value.get(k), str) and value[k]
                                                  for k in USER_KEYS):
            errors[field] = ["assignee must be null or an object with uuid, account_id or "
                             "username"]
        return value
    # component / milestone / version
    if value is None:
        return None
    name = value.get("name") if isinstance(value, dict) else None
    if not isinstance(name, str) or not name:
        errors[field] = [f"{field} must be null or an object with a name"]
    return name


def parse_issue_body(body: Any, creating: bool) -> dict[str, Any]:
    """An issue body's known fields, validated. Read-only and unknown fields are ignored."""
    if not isinstance(body, dict):
        raise ApiError(400, "Bad request", detail="The request body must be a JSON object.")
    errors: dict[str, list[str]] = {}
    if creating and "title" not in body:
        errors["title"] = ["required key not provided"]
    edits = {}
    for field in ("title", "content", *ENUMS, "assignee", *TRACKER_OBJECTS):
        if field in body:
            edits[field] = _check(field, body[field], errors)
    if errors:
        raise bad_request(errors)
    return edits


def parse_change_body(body: Any) -> tuple[dict[str, Any], str | None]:
    """A change body as (edits, message raw). Only `changes.*.new` values are read."""
    if not isinstance(body, dict):
        raise ApiError(400, "Bad request", detail="The request body must be a JSON object.")
    changes = body.get("changes") or {}
    message = body.get("message")
    raw = message.get("raw") if isinstance(message, dict) else None
    errors: dict[str, list[str]] = {}
    if not isinstance(changes, dict):
        raise bad_request({"changes": ["changes must be an object"]})
    if raw is not None and not isinstance(raw, str):
        errors["message"] = ["message.raw must be a string"]
    edits: dict[str, Any] = {}
    for key, change in changes.items():
        if key not in CHANGE_KEYS:
            errors[f"changes.{key}"] = [f"unknown change field; expected one of "
                                        f"{', '.join(CHANGE_KEYS)}"]
            continue
        if not isinstance(change, dict) or "new" not in change:
            errors[f"changes.{key}"] = ["expected an object with a new value"]
            continue
        new = change["new"]
        if key == "assignee_account_id":
            edits["assignee"] = {"account_id": new} if new else None
        elif key == "assignee":
            edits["assignee"] = {"username": new} if new else None
        elif key == "content":
            edits["content"] = _check("content", {"raw": new}, errors)
        elif key in TRACKER_OBJECTS:
            edits[key] = _check(key, {"name": new} if new else None, errors)
        else:
            edits[key] = _check(key, new, errors)
    if not edits and raw is None and not errors:
        errors["changes"] = ["at least one change or a message is required"]
    if errors:
        raise bad_request(errors)
    return edits, raw


def rest_changes(diffs: dict[str, tuple[Any, Any]]) -> dict[str, dict[str, str]]:
    """The REST change record's `changes`: strings only, "" for unset (the spec's shape)."""
    out: dict[str, dict[str, str]] = {}
    for field, (old, new) in diffs.items():
        if field == "assignee":
            out["assignee"] = {"old": old.nickname if old else "",
                               "new": new.nickname if new else ""}
            out["assignee_account_id"] = {"old": old.account_id if old else "",
                                          "new": new.account_id if new else ""}
        else:
            out[field] = {"old": old or "", "new": new or ""}
    return out


def webhook_changes(diffs: dict[str, tuple[Any, Any]], base: str) -> dict[str, dict]:
    """The webhook `changes`: `status` for the state, user objects for the assignee."""
    out: dict[str, dict] = {}
    for field, (old, new) in diffs.items():
        if field == "assignee":
            out["assignee"] = {"old": payloads.user(old, base) if old else None,
                               "new": payloads.user(new, base) if new else None}
        else:
            out["status" if field == "state" else field] = {"old": old, "new": new}
    return out


def same_user(a: User | None, b: User | None) -> bool:
    return (a.uuid if a else None) == (b.uuid if b else None)
