"""The admin's connections API (issue 15): what `bbsync connection ...` does, over HTTP, for the
operator console. Admin tokens only. A webhook secret or API token given is stored encrypted
and never answered back; bad input is refused whole, before anything is written.

Resuming a connection queues what waited through this process's publisher (worker.sync.waiting
finds it, as the sweeper does); removing one first deletes bbsync's hooks at Bitbucket, the one
call here that reaches Bitbucket (the hooks' own endpoints are in webhooks/hooks_api.py).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from sqlalchemy.exc import IntegrityError

from webhooks.auth import admins_only
from webhooks.http import BadInput, bitbucket_clients, enqueue, error, json_body, sessions, text_field
from worker import connections
from worker.connections import MAX_SECRET_CHARS, ConnectionSpec, InvalidConnection
from worker.db.models import utcnow
from worker.engine.text import has_surrogate
from worker.sync import waiting

bp = Blueprint("connections_api", __name__, url_prefix="/api/connections")
admins_only(bp)

#: A connection's settings are small; the mapping override is the largest part.
MAX_BODY_BYTES = 64 * 1024
MAX_REPOS = 100
SPEC_FIELDS = frozenset({"repos", "webhook_secrets", "target", "api_url", "mapping", "policies",
                         "api_token", "push_internal_notes"})


@bp.errorhandler(BadInput)
def _bad_input(exc: BadInput):
    return error(400, str(exc))


def missing(name: str):
    """404 for a connection that does not exist (a name that cannot exist is not echoed)."""
    shown = repr(name) if connections.NAME_RE.fullmatch(name) else "by that name"
    return error(404, f"no connection named {shown}")


def body_object() -> dict[str, Any]:
    """The request's JSON object, within MAX_BODY_BYTES, with no NUL or unpaired surrogate in
    any string (key or value) at any depth."""
    if len(request.get_data(cache=True)) > MAX_BODY_BYTES:
        raise BadInput(f"body over the {MAX_BODY_BYTES}-byte limit")
    body = json_body()
    _check_strings(body, "body")
    return body


def _check_strings(value: Any, where: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise BadInput(f"{where} contains a NUL character")
        if has_surrogate(value):
            raise BadInput(f"{where} contains an unpaired UTF-16 surrogate, which is not Unicode text")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, f"{where}.{key}" if where != "body" else key)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, where)


def refuse_unknown(body: dict, allowed: frozenset[str] | set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadInput(f"unknown field(s): {', '.join(unknown)}")


def _strings(body: dict, name: str, max_len: int) -> tuple[str, ...]:
    value = body[name]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadInput(f"{name} must be a list of strings")
    if len(value) > MAX_REPOS:
        raise BadInput(f"{name}: at most {MAX_REPOS}")
    if any(len(v) > max_len for v in value):
        raise BadInput(f"{name}: each at most {max_len} characters")
    return tuple(value)


def _object(body: dict, name: str) -> dict:
    if not isinstance(body[name], dict):
        raise BadInput(f"{name} must be a JSON object")
    return body[name]


def spec_changes(body: dict, allowed: frozenset[str]) -> dict[str, Any]:
    """The ConnectionSpec fields a body gives, checked for type and size (their values are
    checked by worker.connections.validate). Unknown keys are refused by name."""
    refuse_unknown(body, allowed)
    values: dict[str, Any] = {}
    if "repos" in body:
        values["repos"] = _strings(body, "repos", 201)
    if "webhook_secrets" in body:
        values["webhook_secrets"] = _strings(body, "webhook_secrets", MAX_SECRET_CHARS)
    for name, max_len in (("target", 32), ("api_url", 2048), ("api_token", 4096)):
        if name in body:
            values[name] = text_field(body, name, required=True, max_len=max_len)
    if "mapping" in body:
        values["mapping_override"] = _object(body, "mapping")
    if "policies" in body:
        policies = _object(body, "policies")
        if not all(isinstance(p, str) for p in policies.values()):
            raise BadInput("policies: each policy must be a string")
        values["policies"] = policies
    for name in ("push_internal_notes", "paused"):
        if name in body:
            if not isinstance(body[name], bool):
                raise BadInput(f"{name} must be true or false")
            values[name] = body[name]
    return values


@bp.get("")
def list_connections():
    with sessions()() as session:
        return jsonify({"connections": [connections.summary(session, c) for c in connections.list_all(session)]})


@bp.post("")
def create_connection():
    body = body_object()
    name = text_field(body, "name", required=True, max_len=64)
    values = spec_changes({k: v for k, v in body.items() if k != "name"}, SPEC_FIELDS)
    if "repos" not in values:
        raise BadInput("repos is required")
    try:
        with sessions().begin() as session:
            if connections.get(session, name) is not None:
                return error(409, f"a connection named {name!r} exists already")
            connections.upsert(session, ConnectionSpec(name=name, **values))
    except InvalidConnection as exc:
        return error(400, str(exc))
    except IntegrityError:  # made at the same moment by another request
        return error(409, f"a connection named {name!r} exists already")
    return _details(name, 201)


@bp.get("/<name>")
def get_connection(name: str):
    return _details(name)


@bp.patch("/<name>")
def update_connection(name: str):
    values = spec_changes(body_object(), SPEC_FIELDS | {"paused"})
    if not values:
        raise BadInput(f"nothing to change: give one of {', '.join(sorted(SPEC_FIELDS | {'paused'}))}")
    paused = values.pop("paused", None)
    resumed: waiting.Waiting | None = None
    try:
        with sessions().begin() as session:
            conn = connections.get(session, name)
            if conn is None:
                return missing(name)
            if values:
                stored = {"repos": tuple(r.full_name for r in conn.repos), "target": conn.target}
                connections.upsert(session, ConnectionSpec(name=conn.name, **{**stored, **values}))
            if paused is not None:
                was_paused = conn.paused_at is not None
                connections.set_paused(session, name, paused)
                if was_paused and not paused:
                    session.flush()
                    resumed = waiting.find(session, utcnow(), conn.id)
    except InvalidConnection as exc:
        return error(400, str(exc))
    # After the commit: a task that starts first must find its connection resumed.
    for task, arg in resumed.jobs() if resumed else ():
        enqueue(task, arg)
    return _details(name)


@bp.delete("/<name>")
def delete_connection(name: str):
    """Bitbucket's hooks first (if that fails, nothing is removed), then the data here."""
    from worker.bitbucket.errors import BitbucketError
    from worker.sync import hooks
    with sessions()() as session:
        if connections.get(session, name) is None:
            return missing(name)
    try:
        results = hooks.remove(name, client_factory=bitbucket_clients())
    except hooks.HooksError:  # removed by someone else meanwhile
        return missing(name)
    except BitbucketError as exc:
        return error(502, f"its webhooks could not be removed, so nothing was: {exc}")
    if any(r.error for r in results):
        return jsonify({"error": "its webhooks could not all be removed, so its data was kept",
                        "repos": results_json(results)}), 502
    with sessions().begin() as session:
        conn = connections.get(session, name)
        if conn is None:
            return missing(name)
        counts = connections.delete(session, conn)
    return jsonify({"removed": name, "hooks_deleted": sum(len(r.actions) for r in results), "counts": counts})


def results_json(results) -> list[dict[str, Any]]:
    """Each repository's hook (worker.sync.hooks.RepoResult), as `bbsync hooks list --json`
    shows it, with what was done to it and its error, if any."""
    rows = []
    for r in results:
        hook = (r.state.hook if r.state else None) or {}
        rows.append({"repo": r.repo, "hook": hook.get("uuid"), "url": hook.get("url"),
                     "events": hook.get("events") or [], "active": hook.get("active"),
                     "secret_set": hook.get("secret_set"), "actions": r.actions,
                     "state": r.state.state if r.state else None, "ok": r.ok,
                     "error": r.error.split(": ", 1)[-1] if r.error else None})
    return rows


def _details(name: str, status: int = 200):
    with sessions()() as session:
        conn = connections.get(session, name)
        if conn is None:
            return missing(name)
        return jsonify(connections.details(session, conn)), status
