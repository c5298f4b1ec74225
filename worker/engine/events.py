"""Normalize Bitbucket webhook payloads into small typed events.

Payloads vary (older captures carry `username`, newer `account_id`; synthetic ones carry
placeholder enums), so this reads defensively and raises MalformedEvent, with a message a
person can act on, only when the payload cannot describe an issue at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Mapping

#: Events that this product syncs; anything else is acknowledged and recorded as ignored.
ISSUE_EVENTS = ("issue:created", "issue:updated", "issue:comment_created")

#: The fields synced between an issue and a ticket, named the helpdesk's way.
SYNCED_FIELDS = ("title", "description", "status", "priority", "type", "assignee")

#: Marks a field the payload did not carry, as distinct from a field it carried as null.
MISSING = object()


class MalformedEvent(ValueError):
    """The payload does not describe an issue event we can act on."""


@dataclass(frozen=True)
class Comment:
    id: int
    body: str
    author: str | None
    created_at: datetime | None


@dataclass(frozen=True)
class IssueSnapshot:
    repo: str
    issue_id: int
    url: str | None
    # Bitbucket's values, keyed by SYNCED_FIELDS; a field absent from the payload is MISSING.
    fields: Mapping[str, Any]
    reporter: str | None
    updated_at: datetime | None


@dataclass(frozen=True)
class IssueEvent:
    key: str
    issue: IssueSnapshot
    actor: str | None
    actor_uuid: str | None
    comment: Comment | None = None  # a real comment; change records without a message are not
    change_hints: frozenset[str] = field(default_factory=frozenset)


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else None


def display_name(user: Any) -> str | None:
    if not isinstance(user, dict):
        return None
    for key in ("display_name", "nickname", "username"):
        if isinstance(user.get(key), str) and user[key]:
            return user[key]
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not an id


def _text(value: Any) -> Any:
    return value if isinstance(value, str) else MISSING


def _issue_fields(issue: Mapping[str, Any]) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    fields["title"] = _text(issue.get("title"))
    content = issue.get("content")
    if isinstance(content, dict) and "raw" in content:
        fields["description"] = content["raw"] if isinstance(content["raw"], str) else ""
    else:
        fields["description"] = MISSING
    fields["status"] = _text(issue.get("state"))
    fields["priority"] = _text(issue.get("priority"))
    fields["type"] = _text(issue.get("kind"))
    fields["assignee"] = display_name(issue["assignee"]) if "assignee" in issue else MISSING
    return fields


def _comment_body(raw: Any) -> str | None:
    """The message of a payload's comment; None for a change record (`content.raw` null) or
    anything that is not a comment."""
    if not isinstance(raw, dict):
        return None
    content = raw.get("content")
    body = content.get("raw") if isinstance(content, dict) else None
    return body if isinstance(body, str) and body.strip() else None


def _checked(event_key: str, payload: Any) -> tuple[dict, str]:
    """The issue object and repository name of a payload that normalize can turn into an event;
    MalformedEvent, with the reason, for one it cannot. Every reason to refuse a payload is
    here, so that the receiver's quick_check refuses exactly what normalize would."""
    if event_key not in ISSUE_EVENTS:
        raise MalformedEvent(f"event {event_key!r} is not an issue event")
    if not isinstance(payload, dict):
        raise MalformedEvent("body must be a JSON object")
    issue = payload.get("issue")
    if not isinstance(issue, dict):
        raise MalformedEvent("payload has no issue object")
    if not _is_int(issue.get("id")):
        raise MalformedEvent("issue.id must be an integer")
    repo = payload.get("repository")
    full_name = repo.get("full_name") if isinstance(repo, dict) else None
    if not isinstance(full_name, str) or "/" not in full_name:
        raise MalformedEvent("repository.full_name is missing")
    comment = payload.get("comment")
    has_body = _comment_body(comment) is not None
    if has_body and not _is_int(comment.get("id")):
        raise MalformedEvent("comment.id must be an integer")
    if event_key == "issue:comment_created" and not has_body:
        raise MalformedEvent("issue:comment_created without a comment body")
    return issue, full_name


def _comment(raw: Any) -> Comment | None:
    """A comment with a message (checked by _checked); Bitbucket's change records have
    `content.raw` null."""
    body = _comment_body(raw)
    if body is None:
        return None
    return Comment(id=raw["id"], body=body, author=display_name(raw.get("user")),
                   created_at=parse_time(raw.get("created_on")))


def normalize(event_key: str, payload: Mapping[str, Any]) -> IssueEvent:
    issue, full_name = _checked(event_key, payload)
    links = issue.get("links") if isinstance(issue.get("links"), dict) else {}
    html = links.get("html") if isinstance(links.get("html"), dict) else {}
    changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
    actor = payload.get("actor")
    return IssueEvent(
        key=event_key,
        issue=IssueSnapshot(
            repo=full_name,
            issue_id=issue["id"],
            url=html.get("href") if isinstance(html.get("href"), str) else None,
            fields=_issue_fields(issue),
            reporter=display_name(issue.get("reporter")),
            updated_at=parse_time(issue.get("updated_on")),
        ),
        actor=display_name(actor),
        actor_uuid=actor.get("uuid") if isinstance(actor, dict) and isinstance(actor.get("uuid"), str) else None,
        comment=_comment(payload.get("comment")),
        change_hints=frozenset(k for k in changes if isinstance(k, str)),
    )


def quick_check(event_key: str, payload: Any) -> str | None:
    """The receiver's cheap shape check: a reason to reject with 400, or None if acceptable."""
    if not isinstance(payload, dict):
        return "body must be a JSON object"
    if event_key not in ISSUE_EVENTS:
        return None  # not ours to judge; recorded as ignored
    try:
        # The checks alone: building the event (times parsed, names picked, three frozen
        # dataclasses) was most of this check's cost, and the worker builds it anyway.
        _checked(event_key, payload)
    except MalformedEvent as exc:
        return str(exc)
    return None


def issue_key(payload: Any) -> str | None:
    """"workspace/repo#id" of an issue event's payload, if it has one (cheap; no validation)."""
    try:
        repo, issue_id = payload["repository"]["full_name"], payload["issue"]["id"]
    except (KeyError, TypeError):
        return None
    if isinstance(repo, str) and _is_int(issue_id):
        return f"{repo}#{issue_id}"[:300]
    return None
