"""The admin's hooks API (issue 15): what `bbsync hooks ...` does (worker.sync.hooks), over HTTP.
Admin tokens only. These call Bitbucket within the request, as the command does: they are an
admin's setup operations, not the sync's work.

Each answer lists every repository's hook and its state; `ok` says whether all are as wanted. A
connection that does not exist answers 404, one with no registered hooks 409, an unsafe URL 400;
a repository whose hook Bitbucket would not read or write makes the answer 502, with each
repository's result (the others' work is done and recorded).
"""
from __future__ import annotations

from datetime import timedelta

from flask import Blueprint, jsonify, request

from webhooks.auth import admins_only
from webhooks.connections_api import body_object, missing, refuse_unknown, results_json
from webhooks.http import BadInput, bitbucket_clients, error, sessions, text_field
from worker import connections

bp = Blueprint("hooks_api", __name__, url_prefix="/api/connections/<name>/hooks")
admins_only(bp)

MAX_OVERLAP_SECONDS = 30 * 24 * 3600
DEFAULT_OVERLAP_SECONDS = 3600


@bp.errorhandler(BadInput)
def _bad_input(exc: BadInput):
    return error(400, str(exc))


def _run(name: str, operation: str, *args):
    """worker.sync.hooks.`operation`(name, *args), answered."""
    from config.outbound import UnsafeUrl
    from worker.bitbucket.errors import BitbucketError
    from worker.sync import hooks
    with sessions()() as session:
        if connections.get(session, name) is None:
            return missing(name)
    try:
        results = getattr(hooks, operation)(name, *args, client_factory=bitbucket_clients())
    except UnsafeUrl as exc:
        return error(400, str(exc))
    except hooks.HooksError as exc:
        return error(409, str(exc))
    except BitbucketError as exc:  # before any repository (e.g. the connection has no credential)
        return error(502, str(exc))
    answer = {"ok": all(r.ok for r in results), "repos": results_json(results)}
    failed = [r.error for r in results if r.error]
    if failed:
        return jsonify({"error": "; ".join(failed), **answer}), 502
    return jsonify(answer)


@bp.get("")
def list_hooks(name: str):
    """Each repository's hook as Bitbucket has it, and its state (`bbsync hooks list|verify`)."""
    return _run(name, "inspect")


@bp.post("")
def register_hooks(name: str):
    body = body_object()
    refuse_unknown(body, {"public_url"})
    return _run(name, "register", text_field(body, "public_url", required=True, max_len=2048))


@bp.post("/repair")
def repair_hooks(name: str):
    return _run(name, "register")


@bp.delete("")
def remove_hooks(name: str):
    return _run(name, "remove")


@bp.post("/rotate")
def rotate_secret(name: str):
    """A new secret on every hook; the old one is accepted for `overlap_seconds` more."""
    body = body_object() if request.get_data(cache=True) else {}  # no body: the default overlap
    refuse_unknown(body, {"overlap_seconds"})
    overlap = body.get("overlap_seconds", DEFAULT_OVERLAP_SECONDS)
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 1 <= overlap <= MAX_OVERLAP_SECONDS:
        raise BadInput(f"overlap_seconds must be an integer from 1 to {MAX_OVERLAP_SECONDS}")
    return _run(name, "rotate", timedelta(seconds=overlap))
