"""The simulator's stored records and the enums Bitbucket validates against.

Records hold plain values (datetimes, strings, other records); how they look on the wire is
payloads.py's business. They are mutated only by SimulatorState while it holds its lock.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

STATES = ("submitted", "new", "open", "resolved", "on hold", "invalid", "duplicate", "wontfix",
          "closed")
KINDS = ("bug", "enhancement", "proposal", "task")
PRIORITIES = ("trivial", "minor", "major", "critical", "blocker")
MARKUPS = ("markdown", "creole", "plaintext")

# Every event a Bitbucket webhook may subscribe to (the spec's `webhook_subscription.events`
# enum). Only the three issue events are ever fired by the simulator.
HOOK_EVENTS = (
    "issue:comment_created", "issue:created", "issue:updated", "project:updated",
    "pullrequest:approved", "pullrequest:changes_request_created",
    "pullrequest:changes_request_removed", "pullrequest:comment_created",
    "pullrequest:comment_deleted", "pullrequest:comment_reopened",
    "pullrequest:comment_resolved", "pullrequest:comment_updated", "pullrequest:created",
    "pullrequest:fulfilled", "pullrequest:push", "pullrequest:rejected",
    "pullrequest:unapproved", "pullrequest:updated", "repo:commit_comment_created",
    "repo:commit_status_created", "repo:commit_status_updated", "repo:created", "repo:deleted",
    "repo:fork", "repo:imported", "repo:push", "repo:transfer", "repo:updated",
)

# Bitbucket comment ids are large, globally increasing numbers; starting here makes the
# simulator's look like real ones (and catches code that assumes small ids).
FIRST_COMMENT_ID = 100_000_000
FIRST_CHANGE_ID = 1_000_000


class ApiError(Exception):
    """A failure the REST API reports as Bitbucket's error envelope."""

    def __init__(self, status: int, message: str, detail: str | None = None,
                 fields: dict[str, list[str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.detail = detail
        self.fields = fields


@dataclass
class User:
    uuid: str              # with braces, as in API bodies: "{...}"
    display_name: str
    nickname: str
    account_id: str


@dataclass
class Comment:
    id: int
    raw: str | None        # None for the comment that records a change without a message
    user: User
    created_on: datetime
    markup: str = "markdown"
    updated_on: datetime | None = None
    change_id: int | None = None     # set on change-record comments


@dataclass
class Change:
    id: int
    user: User
    created_on: datetime
    changes: dict[str, dict[str, str]]   # REST form: {"state": {"old": "new", "new": "open"}}
    message_raw: str | None
    comment_id: int


@dataclass
class Attachment:
    name: str
    data: bytes
    content_type: str
    created_on: datetime


@dataclass
class Issue:
    id: int
    title: str
    reporter: User
    created_on: datetime
    updated_on: datetime
    content_raw: str = ""
    markup: str = "markdown"
    state: str = "new"
    kind: str = "bug"
    priority: str = "major"
    assignee: User | None = None
    component: str | None = None
    milestone: str | None = None
    version: str | None = None
    # Real payloads carry edited_on null even after the description was edited (see the
    # captured issue_updated webhook), so the simulator never sets it.
    edited_on: datetime | None = None
    votes: int = 0
    watches: int = 1
    comments: dict[int, Comment] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    attachments: dict[str, Attachment] = field(default_factory=dict)


@dataclass
class Hook:
    uuid: str              # without braces; bodies wrap it, the X-Hook-UUID header does not
    url: str
    description: str
    active: bool
    events: list[str]
    secret: str | None
    created_at: datetime


@dataclass
class Repository:
    workspace: str
    slug: str
    uuid: str              # with braces
    owner: User
    created_on: datetime
    updated_on: datetime
    has_issues: bool
    is_private: bool = True
    description: str = ""
    next_issue_id: int = 1
    issues: dict[int, Issue] = field(default_factory=dict)
    hooks: dict[str, Hook] = field(default_factory=dict)
    # name -> id, for component/milestone/version objects (created when first used)
    tracker_objects: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.workspace}/{self.slug}"
