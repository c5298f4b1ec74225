"""Bitbucket Cloud REST API 2.0 routes: repositories, issues, changes, comments,
attachments, webhooks and users. Thin: parse the request, call SimulatorState, shape the
response (status codes, Location headers, pagination)."""
from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, Response, current_app, g, jsonify, redirect, request

from . import bbql, payloads
from .models import ApiError

bp = Blueprint("api", __name__, url_prefix="/2.0")

REPO = "/repositories/<workspace>/<slug>"
ISSUE = REPO + "/issues/<int:issue_id>"

# Fields `q` and `sort` may name (the first segment of a dotted path), per collection.
ISSUE_FIELDS = ("id", "title", "state", "kind", "priority", "created_on", "updated_on",
                "edited_on", "assignee", "reporter", "content", "component", "milestone",
                "version", "votes", "watches", "repository", "type")
COMMENT_FIELDS = ("id", "content", "user", "created_on", "updated_on", "issue", "type")
CHANGE_FIELDS = ("id", "created_on", "user", "issue", "changes", "message", "type")
HOOK_FIELDS = ("uuid", "url", "description", "active", "events", "created_at", "type")
ATTACHMENT_FIELDS = ("name", "type")

DEFAULT_PAGELEN = 10
MAX_PAGELEN = 100


def _state():
    return current_app.extensions["bbsim"]


def _json_body() -> Any:
    body = request.get_json(silent=True)
    if body is None and request.get_data():
        raise ApiError(400, "Bad request", detail="The request body is not valid JSON.")
    return body if body is not None else {}


def _int_arg(name: str, default: int, low: int, high: int | None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid {name}: {raw!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high else f"at least {low}"
        raise ApiError(400, f"Invalid {name}: must be {bounds}")
    return value


def _page_url(page: int) -> str:
    args = request.args.to_dict(flat=True)
    args["page"] = str(page)
    return f"{_state().public_url}{request.path}?{urlencode(args)}"


def _paginated(values: list[dict], fields: tuple[str, ...]) -> Response:
    """Filter (`q`), sort (`sort`) and page (`page`, `pagelen`) a collection."""
    try:
        if request.args.get("q"):
            query = bbql.parse(request.args["q"], fields)
            values = [v for v in values if bbql.matches(query, v)]
        if request.args.get("sort"):
            values = bbql.sort(values, request.args["sort"], fields)
    except bbql.QueryError as exc:
        raise ApiError(400, str(exc)) from None
    pagelen = _int_arg("pagelen", DEFAULT_PAGELEN, 1, MAX_PAGELEN)
    page = _int_arg("page", 1, 1, None)
    start = (page - 1) * pagelen
    if page > 1 and start >= len(values):
        raise ApiError(404, "Invalid page")
    more = start + pagelen < len(values)
    return jsonify(payloads.page(values[start:start + pagelen], page, pagelen, len(values),
                                 _page_url(page + 1) if more else None,
                                 _page_url(page - 1) if page > 1 else None))


def _created(body: dict | None, location: str) -> Response:
    response = jsonify(body) if body is not None else Response(status=201)
    response.status_code = 201
    response.headers["Location"] = location
    return response


def _no_content() -> Response:
    return Response(status=204)


# -- users -----------------------------------------------------------------------------------

@bp.get("/user")
def current_user():
    return jsonify(_state().user_payload(g.actor))


@bp.get("/users/<reference>")
def get_user(reference: str):
    return jsonify(_state().find_user(reference))


# -- repositories ----------------------------------------------------------------------------

def _repository_options(body: Any) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "Bad request", detail="The request body must be a JSON object.")
    if body.get("scm", "git") != "git":
        raise ApiError(400, "Bad request", fields={"scm": ["Only git is supported."]})
    return {"has_issues": bool(body.get("has_issues", False)),
            "is_private": bool(body.get("is_private", True)),
            "description": str(body.get("description", ""))}


@bp.post(REPO)
def create_repository(workspace: str, slug: str):
    # Bitbucket answers a repository creation with 200, not 201; has_issues defaults false.
    return jsonify(_state().create_repository(workspace, slug, **_repository_options(_json_body())))


@bp.get(REPO)
def get_repository(workspace: str, slug: str):
    return jsonify(_state().get_repository(workspace, slug))


@bp.put(REPO)
def put_repository(workspace: str, slug: str):
    body = _json_body()
    if not isinstance(body, dict):
        raise ApiError(400, "Bad request", detail="The request body must be a JSON object.")
    state = _state()
    try:
        return jsonify(state.update_repository(workspace, slug, body))
    except ApiError as exc:
        if exc.status != 404:
            raise
    created = state.create_repository(workspace, slug, **_repository_options(body))
    return _created(created, created["links"]["self"]["href"])


@bp.delete(REPO)
def delete_repository(workspace: str, slug: str):
    _state().delete_repository(workspace, slug)
    return _no_content()


# -- issues ----------------------------------------------------------------------------------

@bp.get(REPO + "/issues")
def list_issues(workspace: str, slug: str):
    return _paginated(_state().list_issues(workspace, slug), ISSUE_FIELDS)


@bp.post(REPO + "/issues")
def create_issue(workspace: str, slug: str):
    issue = _state().create_issue(workspace, slug, _json_body(), g.actor)
    return _created(issue, issue["links"]["self"]["href"])


@bp.get(ISSUE)
def get_issue(workspace: str, slug: str, issue_id: int):
    return jsonify(_state().get_issue(workspace, slug, issue_id))


@bp.put(ISSUE)
def update_issue(workspace: str, slug: str, issue_id: int):
    return jsonify(_state().update_issue(workspace, slug, issue_id, _json_body(), g.actor))


@bp.delete(ISSUE)
def delete_issue(workspace: str, slug: str, issue_id: int):
    _state().delete_issue(workspace, slug, issue_id)
    return _no_content()


# -- changes ---------------------------------------------------------------------------------

@bp.get(ISSUE + "/changes")
def list_changes(workspace: str, slug: str, issue_id: int):
    return _paginated(_state().list_changes(workspace, slug, issue_id), CHANGE_FIELDS)


@bp.post(ISSUE + "/changes")
def post_change(workspace: str, slug: str, issue_id: int):
    change = _state().post_change(workspace, slug, issue_id, _json_body(), g.actor)
    return _created(change, change["links"]["self"]["href"])


@bp.get(ISSUE + "/changes/<int:change_id>")
def get_change(workspace: str, slug: str, issue_id: int, change_id: int):
    return jsonify(_state().get_change(workspace, slug, issue_id, change_id))


# -- comments --------------------------------------------------------------------------------

@bp.get(ISSUE + "/comments")
def list_comments(workspace: str, slug: str, issue_id: int):
    return _paginated(_state().list_comments(workspace, slug, issue_id), COMMENT_FIELDS)


@bp.post(ISSUE + "/comments")
def add_comment(workspace: str, slug: str, issue_id: int):
    comment = _state().add_comment(workspace, slug, issue_id, _json_body(), g.actor)
    return _created(comment, comment["links"]["self"]["href"])


@bp.get(ISSUE + "/comments/<int:comment_id>")
def get_comment(workspace: str, slug: str, issue_id: int, comment_id: int):
    return jsonify(_state().get_comment(workspace, slug, issue_id, comment_id))


@bp.put(ISSUE + "/comments/<int:comment_id>")
def edit_comment(workspace: str, slug: str, issue_id: int, comment_id: int):
    return jsonify(_state().edit_comment(workspace, slug, issue_id, comment_id, _json_body()))


@bp.delete(ISSUE + "/comments/<int:comment_id>")
def delete_comment(workspace: str, slug: str, issue_id: int, comment_id: int):
    _state().delete_comment(workspace, slug, issue_id, comment_id)
    return _no_content()


# -- attachments -----------------------------------------------------------------------------

@bp.get(ISSUE + "/attachments")
def list_attachments(workspace: str, slug: str, issue_id: int):
    return _paginated(_state().list_attachments(workspace, slug, issue_id), ATTACHMENT_FIELDS)


@bp.post(ISSUE + "/attachments")
def upload_attachments(workspace: str, slug: str, issue_id: int):
    state = _state()
    state.get_issue(workspace, slug, issue_id)     # 404/410 before complaining about files
    if request.mimetype != "multipart/form-data":
        raise ApiError(400, "Bad request", detail="Attachments must be sent as "
                                                  "multipart/form-data.")
    files = [(f.filename or field, f.read(), f.mimetype or "application/octet-stream")
             for field in request.files for f in request.files.getlist(field)]
    if not files:
        raise ApiError(400, "Bad request", detail="No files were uploaded.")
    state.put_attachments(workspace, slug, issue_id, files)
    return _created(None, f"{state.public_url}{request.path}")


@bp.get(ISSUE + "/attachments/<path:name>")
def get_attachment(workspace: str, slug: str, issue_id: int, name: str):
    """Like Bitbucket: a redirect to a one-time download URL (served without auth)."""
    state = _state()
    data, content_type = state.read_attachment(workspace, slug, issue_id, name)
    token = state.issue_download(data, content_type, name)
    return redirect(f"{state.public_url}/_sim/download/{token}", code=302)


@bp.delete(ISSUE + "/attachments/<path:name>")
def delete_attachment(workspace: str, slug: str, issue_id: int, name: str):
    _state().delete_attachment(workspace, slug, issue_id, name)
    return _no_content()


# -- webhooks --------------------------------------------------------------------------------

@bp.get(REPO + "/hooks")
def list_hooks(workspace: str, slug: str):
    return _paginated(_state().list_hooks(workspace, slug), HOOK_FIELDS)


@bp.post(REPO + "/hooks")
def create_hook(workspace: str, slug: str):
    hook = _state().create_hook(workspace, slug, _json_body())
    return _created(hook, hook["links"]["self"]["href"])


@bp.get(REPO + "/hooks/<uid>")
def get_hook(workspace: str, slug: str, uid: str):
    return jsonify(_state().get_hook(workspace, slug, uid))


@bp.put(REPO + "/hooks/<uid>")
def update_hook(workspace: str, slug: str, uid: str):
    return jsonify(_state().update_hook(workspace, slug, uid, _json_body()))


@bp.delete(REPO + "/hooks/<uid>")
def delete_hook(workspace: str, slug: str, uid: str):
    _state().delete_hook(workspace, slug, uid)
    return _no_content()
