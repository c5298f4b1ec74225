"""JSON shapes, as Bitbucket Cloud writes them.

Held to the official spec (tests/fixtures/bitbucket-swagger.json) and to the captured webhook
bodies (tests/fixtures/webhooks/): key names, nesting, `type` fields, UUIDs in braces,
timestamps with microseconds and an offset, and null (not absent) for unset assignee,
component, milestone, version, edited_on and a comment's updated_on.

Every function takes `base`, the simulator's public URL, used for `links.*.href`.
"""
from __future__ import annotations

import html
from datetime import datetime
from urllib.parse import quote

from .models import Attachment, Change, Comment, Hook, Issue, Repository, User


def timestamp(when: datetime | None) -> str | None:
    """ISO-8601 with microseconds always present and a +00:00 offset, like Bitbucket."""
    if when is None:
        return None
    return when.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")


def render_html(raw: str | None) -> str:
    """A trivial markdown rendering: escaped paragraphs. Enough for a client to see html."""
    if not raw:
        return ""
    paragraphs = [p.strip() for p in raw.replace("\r\n", "\n").split("\n\n") if p.strip()]
    return "\n".join(f"<p>{html.escape(p)}</p>" for p in paragraphs)


def _link(href: str) -> dict:
    return {"href": href}


def _repo_api(base: str, repo: Repository) -> str:
    return f"{base}/2.0/repositories/{repo.full_name}"


def user(u: User, base: str) -> dict:
    ref = quote(u.uuid, safe="")
    return {
        "type": "user",
        "display_name": u.display_name,
        "uuid": u.uuid,
        "account_id": u.account_id,
        "nickname": u.nickname,
        "links": {
            "self": _link(f"{base}/2.0/users/{ref}"),
            "html": _link(f"{base}/{ref}/"),
            "avatar": _link(f"{base}/account/{ref}/avatar/32/"),
        },
    }


def workspace_owner(repo: Repository, base: str) -> dict:
    """The repository's owner: the workspace, shown as a team account."""
    owner = repo.owner
    ref = quote(owner.uuid, safe="")
    return {
        "type": "team",
        "display_name": owner.display_name,
        "uuid": owner.uuid,
        "username": repo.workspace,
        "links": {
            "self": _link(f"{base}/2.0/workspaces/{ref}"),
            "html": _link(f"{base}/{repo.workspace}/"),
            "avatar": _link(f"{base}/workspaces/{repo.workspace}/avatar/"),
        },
    }


def _repo_links(repo: Repository, base: str) -> dict:
    return {
        "self": _link(_repo_api(base, repo)),
        "html": _link(f"{base}/{repo.full_name}"),
        "avatar": _link(f"{base}/{repo.full_name}/avatar/32/"),
    }


def repository_ref(repo: Repository, base: str) -> dict:
    """The small repository object nested in issues and hooks."""
    return {
        "type": "repository",
        "full_name": repo.full_name,
        "name": repo.slug,
        "uuid": repo.uuid,
        "links": _repo_links(repo, base),
    }


def repository_webhook(repo: Repository, base: str) -> dict:
    """The `repository` of a webhook body (as in the captured deliveries)."""
    return {
        **repository_ref(repo, base),
        "scm": "git",
        "is_private": repo.is_private,
        "owner": workspace_owner(repo, base),
        "website": "",
    }


def repository(repo: Repository, base: str) -> dict:
    """The full repository, as GET /2.0/repositories/{ws}/{slug} returns it."""
    links = _repo_links(repo, base)
    links["hooks"] = _link(f"{_repo_api(base, repo)}/hooks")
    return {
        **repository_ref(repo, base),
        "links": links,
        "slug": repo.slug,
        "scm": "git",
        "is_private": repo.is_private,
        "has_issues": repo.has_issues,
        "has_wiki": False,
        "description": repo.description,
        "fork_policy": "allow_forks",
        "language": "",
        "size": 0,
        "created_on": timestamp(repo.created_on),
        "updated_on": timestamp(repo.updated_on),
        "owner": workspace_owner(repo, base),
        "workspace": {
            "type": "workspace",
            "slug": repo.workspace,
            "name": repo.workspace,
            "uuid": repo.owner.uuid,
            "links": {
                "self": _link(f"{base}/2.0/workspaces/{repo.workspace}"),
                "html": _link(f"{base}/{repo.workspace}/"),
                "avatar": _link(f"{base}/workspaces/{repo.workspace}/avatar/"),
            },
        },
    }


def _issue_api(base: str, repo: Repository, issue_id: int) -> str:
    return f"{_repo_api(base, repo)}/issues/{issue_id}"


def _tracker_object(kind: str, name: str | None, repo: Repository, base: str) -> dict | None:
    """A component / milestone / version object, or None when unset."""
    if name is None:
        return None
    object_id = repo.tracker_objects.get((kind, name), 0)
    return {
        "type": kind,
        "name": name,
        "id": object_id,
        "links": {"self": _link(f"{_repo_api(base, repo)}/{kind}s/{object_id}")},
    }


def issue_ref(repo: Repository, issue: Issue, base: str) -> dict:
    """The small issue object nested in comments and changes."""
    api = _issue_api(base, repo, issue.id)
    return {
        "type": "issue",
        "id": issue.id,
        "title": issue.title,
        "repository": repository_ref(repo, base),
        "links": {
            "self": _link(api),
            "html": _link(f"{base}/{repo.full_name}/issues/{issue.id}"),
        },
    }


def issue(repo: Repository, item: Issue, base: str) -> dict:
    api = _issue_api(base, repo, item.id)
    return {
        "type": "issue",
        "id": item.id,
        "repository": repository_ref(repo, base),
        "links": {
            "self": _link(api),
            "html": _link(f"{base}/{repo.full_name}/issues/{item.id}"),
            "comments": _link(f"{api}/comments"),
            "attachments": _link(f"{api}/attachments"),
            "watch": _link(f"{api}/watch"),
            "vote": _link(f"{api}/vote"),
        },
        "title": item.title,
        "reporter": user(item.reporter, base),
        "assignee": user(item.assignee, base) if item.assignee else None,
        "created_on": timestamp(item.created_on),
        "updated_on": timestamp(item.updated_on),
        "edited_on": timestamp(item.edited_on),
        "state": item.state,
        "kind": item.kind,
        "priority": item.priority,
        "milestone": _tracker_object("milestone", item.milestone, repo, base),
        "component": _tracker_object("component", item.component, repo, base),
        "version": _tracker_object("version", item.version, repo, base),
        "votes": item.votes,
        "watches": item.watches,
        "content": {
            "raw": item.content_raw,
            "markup": item.markup,
            "html": render_html(item.content_raw),
        },
    }


def comment(repo: Repository, item: Issue, c: Comment, base: str,
            with_issue: bool = True) -> dict:
    """An issue comment. Webhook bodies leave out the nested `issue` (it is beside it)."""
    api = f"{_issue_api(base, repo, item.id)}/comments/{c.id}"
    links = {"self": _link(api)}
    if c.change_id is None:
        # The captured change-record comments carry only a self link.
        links["html"] = _link(f"{base}/{repo.full_name}/issues/{item.id}#comment-{c.id}")
    body = {
        "type": "issue_comment",
        "id": c.id,
        "content": {"raw": c.raw, "markup": c.markup, "html": render_html(c.raw)},
        "user": user(c.user, base),
        "created_on": timestamp(c.created_on),
        "updated_on": timestamp(c.updated_on),
        "links": links,
    }
    if with_issue:
        body["issue"] = issue_ref(repo, item, base)
    return body


def change(repo: Repository, item: Issue, ch: Change, base: str) -> dict:
    """A REST change record (GET .../changes): `state` key, string old/new values."""
    api = _issue_api(base, repo, item.id)
    raw = ch.message_raw or ""
    return {
        "type": "issue_change",
        "id": ch.id,
        "created_on": timestamp(ch.created_on),
        "user": user(ch.user, base),
        "issue": issue_ref(repo, item, base),
        "changes": {key: dict(value) for key, value in ch.changes.items()},
        "message": {"raw": raw, "markup": "markdown", "html": render_html(raw)},
        "links": {"self": _link(f"{api}/changes/{ch.id}"), "issue": _link(api)},
    }


def attachment(repo: Repository, item: Issue, a: Attachment, base: str) -> dict:
    api = f"{_issue_api(base, repo, item.id)}/attachments/{quote(a.name, safe='')}"
    return {"type": "issue_attachment", "name": a.name, "links": {"self": _link(api)}}


def hook(repo: Repository, h: Hook, base: str) -> dict:
    """A webhook subscription. The secret itself is never returned, only `secret_set`."""
    return {
        "type": "webhook_subscription",
        "uuid": "{" + h.uuid + "}",
        "url": h.url,
        "description": h.description,
        "subject_type": "repository",
        "subject": repository_ref(repo, base),
        "active": h.active,
        "created_at": timestamp(h.created_at),
        "events": list(h.events),
        "secret_set": bool(h.secret),
        "skip_cert_verification": False,
        "links": {"self": _link(f"{_repo_api(base, repo)}/hooks/%7B{h.uuid}%7D")},
    }


def page(values: list, page_number: int, pagelen: int, size: int,
         next_url: str | None, previous_url: str | None) -> dict:
    """The pagination envelope; `next`/`previous` are absent (not null) when there is none."""
    body = {"pagelen": pagelen, "size": size, "page": page_number, "values": values}
    if next_url:
        body["next"] = next_url
    if previous_url:
        body["previous"] = previous_url
    return body


def error(message: str, detail: str | None = None,
          fields: dict[str, list[str]] | None = None) -> dict:
    inner: dict = {"message": message}
    if detail:
        inner["detail"] = detail
    if fields:
        inner["fields"] = fields
    return {"type": "error", "error": inner}
