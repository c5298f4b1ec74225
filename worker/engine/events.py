"""Normalize Bitbucket webhook payloads into small typed events.

Payloads vary (older captures carry `username`, newer `account_id`; synthetic ones carry
placeholder enums), so this reads defensively and raises MalformedEvent, with a message a
person can act on, only when the payload cannot describe an issue at all.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Callable, Mapping

from worker.engine.text import clean

#: Events that this product syncs; anything else is acknowledged and recorded as ignored.
ISSUE_EVENTS = ("issue:created", "issue:updated", "issue:comment_created")

#: The fields synced between an issue and a ticket, named the helpdesk's way.
SYNCED_FIELDS = ("title", "description", "status", "priority", "type", "assignee")

#: Marks a field the payload did not carry, as distinct from a field it carried as null.
MISSING = object()

#: The columns (worker.db.models, worker.db.helpdesk) that an event's text ends up in, in
#: characters; None: no limit.
#: Status, priority and type reach the ticket only through the mapping tables; a value outside
#: them is kept whole, in the ledger and shadow (text columns).
LIMITS = {"title": 255, "description": None, "status": None, "priority": None, "type": None,
          "assignee": 255}
NAME_LIMIT = 255   # reporter, actor, comment author
REPO_LIMIT = 255
URL_LIMIT = 512
#: Issue and comment ids are PostgreSQL integers.
MAX_ID = 2**31 - 1


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
    # What was changed in the payload's text to store it (worker.engine.text), one note a field.
    cleaned: tuple[str, ...] = ()


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


def _is_id(value: Any) -> bool:
    return _is_int(value) and 0 < value <= MAX_ID


#: normalize's text(name, value, limit): the cleaned value, its note kept for the event.
Cleaner = Callable[[str, str, int | None], str]


def _issue_fields(issue: Mapping[str, Any], text: Cleaner) -> dict[str, Any]:
    content = issue.get("content")
    if isinstance(content, dict) and "raw" in content:
        description = content["raw"] if isinstance(content["raw"], str) else ""
    else:
        description = MISSING
    fields: dict[str, Any] = {}
    for name, value in (("title", issue.get("title")), ("description", description),
                        ("status", issue.get("state")), ("priority", issue.get("priority")),
                        ("type", issue.get("kind"))):
        fields[name] = text(name, value, LIMITS[name]) if isinstance(value, str) else MISSING
    fields["assignee"] = _name(text, "assignee", issue["assignee"]) if "assignee" in issue else MISSING
    return fields


def _name(text: Cleaner, label: str, user: Any) -> str | None:
    """A person's display name, cleaned; one that was nothing but NULs is no name."""
    name = display_name(user)
    if name is None:
        return None
    return text(label, name, NAME_LIMIT) or None


def comment_body(raw: Any) -> str | None:
    """The message of a payload's (or the REST API's) comment; None for a change record
    (`content.raw` null), a message of nothing but blanks and NULs, or anything that is not a
    comment. Not cleaned: normalize cleans it."""
    if not isinstance(raw, dict):
        return None
    content = raw.get("content")
    body = content.get("raw") if isinstance(content, dict) else None
    if not isinstance(body, str):
        return None
    return body if (body if "\x00" not in body else body.replace("\x00", "")).strip() else None


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
    if not _is_id(issue.get("id")):
        raise MalformedEvent(f"issue.id must be an integer from 1 to {MAX_ID}")
    repo = payload.get("repository")
    full_name = repo.get("full_name") if isinstance(repo, dict) else None
    if not isinstance(full_name, str) or "/" not in full_name:
        raise MalformedEvent("repository.full_name is missing")
    comment = payload.get("comment")
    has_body = comment_body(comment) is not None
    if has_body and not _is_id(comment.get("id")):
        raise MalformedEvent(f"comment.id must be an integer from 1 to {MAX_ID}")
    if event_key == "issue:comment_created" and not has_body:
        raise MalformedEvent("issue:comment_created without a comment body")
    return issue, full_name


def _comment(raw: Any, text: Cleaner) -> Comment | None:
    """A comment with a message (checked by _checked); Bitbucket's change records have
    `content.raw` null."""
    body = comment_body(raw)
    if body is None:
        return None
    return Comment(id=raw["id"], body=text("comment", body, None),
                   author=_name(text, "comment author", raw.get("user")),
                   created_at=parse_time(raw.get("created_on")))


def _url(text: Cleaner, href: Any, notes: list[str]) -> str | None:
    """The issue's web address; one too long for its column is dropped (a cut one would lead
    nowhere)."""
    if not isinstance(href, str):
        return None
    url = text("url", href, None)
    if len(url) > URL_LIMIT:
        notes.append(f"url: dropped ({len(url):,} characters, over {URL_LIMIT})")
        return None
    return url


def normalize(event_key: str, payload: Mapping[str, Any]) -> IssueEvent:
    """The event a payload describes, its text cleaned for storing (what was changed is in
    `cleaned`); MalformedEvent for a payload that describes none."""
    issue, full_name = _checked(event_key, payload)
    notes: list[str] = []

    def text(name: str, value: str, limit: int | None) -> str:
        if value.isascii() and "\x00" not in value and (limit is None or len(value) <= limit):
            return value  # clean's fast path, without its call: a dozen texts an event
        cleaned, note = clean(name, value, limit)
        if note is not None:
            notes.append(note)
        return cleaned

    links = issue.get("links") if isinstance(issue.get("links"), dict) else {}
    html = links.get("html") if isinstance(links.get("html"), dict) else {}
    changes = payload.get("changes") if isinstance(payload.get("changes"), dict) else {}
    actor = payload.get("actor")
    snapshot = IssueSnapshot(
        repo=text("repository", full_name, REPO_LIMIT),
        issue_id=issue["id"],
        url=_url(text, html.get("href"), notes),
        fields=_issue_fields(issue, text),
        reporter=_name(text, "reporter", issue.get("reporter")),
        updated_at=parse_time(issue.get("updated_on")),
    )
    return IssueEvent(
        key=event_key,
        issue=snapshot,
        actor=_name(text, "actor", actor),
        actor_uuid=actor.get("uuid") if isinstance(actor, dict) and isinstance(actor.get("uuid"), str) else None,
        comment=_comment(payload.get("comment"), text),
        change_hints=frozenset(k for k in changes if isinstance(k, str)),
        cleaned=tuple(notes),
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
        # The repository cleaned as normalize cleans it: a NUL could not be stored in the key.
        return f"{clean('repository', repo, REPO_LIMIT)[0]}#{issue_id}"[:300]
    return None
