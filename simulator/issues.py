"""Issue tracker operations of SimulatorState: issues, changes, comments, attachments.

Behaviour held to Bitbucket's:
- every effective edit (PUT or POST .../changes) creates an immutable change record and a
  comment on the issue (content.raw null unless the change carried a message), bumps
  updated_on and fires `issue:updated` with that comment;
- a PUT that changes nothing records nothing and fires nothing;
- creating a comment fires `issue:comment_created` and bumps the issue's updated_on;
- editing or deleting a comment and deleting an issue fire no webhook at all (Bitbucket has
  none), and leave the issue's updated_on alone: only a poll of the comments sees them.
"""
from __future__ import annotations

from typing import Any

from . import payloads
from .edits import parse_change_body, parse_issue_body, rest_changes, same_user, webhook_changes
from .models import ApiError, Attachment, Change, Comment, Issue, Repository, User


class IssueOperations:
    """Mixed into SimulatorState; uses its lock, public_url, _now, _tracker, _fire and
    _find_user. Public methods take the lock; helpers expect it held."""

    # -- issues ----------------------------------------------------------------------------

    def list_issues(self, workspace: str, slug: str) -> list[dict]:
        with self.lock:
            repo = self._tracker(workspace, slug)
            return [payloads.issue(repo, item, self.public_url) for item in repo.issues.values()]

    def get_issue(self, workspace: str, slug: str, issue_id: int) -> dict:
        with self.lock:
            repo = self._tracker(workspace, slug)
            return payloads.issue(repo, self._issue(repo, issue_id), self.public_url)

    def create_issue(self, workspace: str, slug: str, body: Any, actor: User) -> dict:
        """POST .../issues: only the title is required; the reporter is the caller."""
        with self.lock:
            repo = self._tracker(workspace, slug)
            edits = parse_issue_body(body, creating=True)
            now = self._now()
            item = Issue(id=repo.next_issue_id, title=edits["title"], reporter=actor,
                         created_on=now, updated_on=now)
            self._assign(repo, item, edits)
            repo.next_issue_id += 1
            repo.issues[item.id] = item
            payload = payloads.issue(repo, item, self.public_url)
            self._fire(repo, "issue:created", {
                "actor": payloads.user(actor, self.public_url),
                "issue": payload,
                "repository": payloads.repository_webhook(repo, self.public_url),
            })
            return payload

    def update_issue(self, workspace: str, slug: str, issue_id: int, body: Any,
                     actor: User) -> dict:
        """PUT .../issues/{id}: partial; omitted fields are kept, null clears."""
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            self._edit(repo, item, parse_issue_body(body, creating=False), actor, None)
            return payloads.issue(repo, item, self.public_url)

    def delete_issue(self, workspace: str, slug: str, issue_id: int) -> None:
        with self.lock:
            repo = self._tracker(workspace, slug)
            self._issue(repo, issue_id)
            del repo.issues[issue_id]

    # -- changes ---------------------------------------------------------------------------

    def list_changes(self, workspace: str, slug: str, issue_id: int) -> list[dict]:
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            return [payloads.change(repo, item, ch, self.public_url) for ch in item.changes]

    def get_change(self, workspace: str, slug: str, issue_id: int, change_id: int) -> dict:
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            for ch in item.changes:
                if ch.id == change_id:
                    return payloads.change(repo, item, ch, self.public_url)
            raise ApiError(404, "Change not found.")

    def post_change(self, workspace: str, slug: str, issue_id: int, body: Any,
                    actor: User) -> dict:
        """POST .../issues/{id}/changes: apply `changes.*.new`, with an optional message."""
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            edits, message = parse_change_body(body)
            change = self._edit(repo, item, edits, actor, message, always=True)
            return payloads.change(repo, item, change, self.public_url)

    # -- comments --------------------------------------------------------------------------

    def list_comments(self, workspace: str, slug: str, issue_id: int) -> list[dict]:
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            return [payloads.comment(repo, item, c, self.public_url)
                    for c in item.comments.values()]

    def get_comment(self, workspace: str, slug: str, issue_id: int, comment_id: int) -> dict:
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            return payloads.comment(repo, item, self._comment(item, comment_id), self.public_url)

    def add_comment(self, workspace: str, slug: str, issue_id: int, body: Any,
                    actor: User) -> dict:
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            now = self._now()
            c = Comment(id=self._take_comment_id(), raw=_comment_raw(body), user=actor,
                        created_on=now)
            item.comments[c.id] = c
            item.updated_on = now
            self._fire(repo, "issue:comment_created", {
                "actor": payloads.user(actor, self.public_url),
                "issue": payloads.issue(repo, item, self.public_url),
                "repository": payloads.repository_webhook(repo, self.public_url),
                "comment": payloads.comment(repo, item, c, self.public_url, with_issue=False),
            })
            return payloads.comment(repo, item, c, self.public_url)

    def edit_comment(self, workspace: str, slug: str, issue_id: int, comment_id: int,
                     body: Any) -> dict:
        """PUT .../comments/{id}: only content.raw changes. No webhook exists for this."""
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            c = self._comment(item, comment_id)
            c.raw = _comment_raw(body)
            c.updated_on = self._now()
            return payloads.comment(repo, item, c, self.public_url)

    def delete_comment(self, workspace: str, slug: str, issue_id: int, comment_id: int) -> None:
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            self._comment(item, comment_id)
            del item.comments[comment_id]

    # -- attachments -----------------------------------------------------------------------

    def list_attachments(self, workspace: str, slug: str, issue_id: int) -> list[dict]:
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            return [payloads.attachment(repo, item, a, self.public_url)
                    for a in item.attachments.values()]

    def put_attachments(self, workspace: str, slug: str, issue_id: int,
                        files: list[tuple[str, bytes, str]]) -> None:
        """Store uploaded files; a file named like an existing attachment replaces it."""
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            for name, data, content_type in files:
                item.attachments.pop(name, None)     # re-added last: ordered by upload date
                item.attachments[name] = Attachment(name, data, content_type, self._now())

    def read_attachment(self, workspace: str, slug: str, issue_id: int,
                        name: str) -> tuple[bytes, str]:
        with self.lock:
            repo = self._tracker(workspace, slug)
            found = self._issue(repo, issue_id).attachments.get(name)
            if found is None:
                raise ApiError(404, "Attachment not found.")
            return found.data, found.content_type

    def delete_attachment(self, workspace: str, slug: str, issue_id: int, name: str) -> None:
        with self.lock:
            repo = self._tracker(workspace, slug)
            item = self._issue(repo, issue_id)
            if item.attachments.pop(name, None) is None:
                raise ApiError(404, "Attachment not found.")

    # -- helpers (called under the lock) ---------------------------------------------------

    @staticmethod
    def _issue(repo: Repository, issue_id: int) -> Issue:
        found = repo.issues.get(issue_id)
        if found is None:
            raise ApiError(404, "Issue not found.")
        return found

    @staticmethod
    def _comment(item: Issue, comment_id: int) -> Comment:
        found = item.comments.get(comment_id)
        if found is None:
            raise ApiError(404, "Comment not found.")
        return found

    def _take_comment_id(self) -> int:
        self._next_comment_id += 1
        return self._next_comment_id

    def _assign(self, repo: Repository, item: Issue, edits: dict[str, Any]) -> dict:
        """Set validated fields on an issue; returns {field: (old, new)} of what changed."""
        diffs: dict[str, tuple[Any, Any]] = {}
        for field, value in edits.items():
            if field == "content":
                item.markup = value.get("markup", item.markup)
                field, value, attribute = "content", value["raw"], "content_raw"
            else:
                attribute = field
            if field == "assignee":
                value = self._find_user(value) if value is not None else None
                if same_user(item.assignee, value):
                    continue
            elif field in ("component", "milestone", "version") and value is not None:
                # Bitbucket needs these defined in the repository first; we define on use.
                repo.tracker_objects.setdefault((field, value), len(repo.tracker_objects) + 1)
            old = getattr(item, attribute)
            if field != "assignee" and old == value:
                continue
            setattr(item, attribute, value)
            diffs[field] = (old, value)
        return diffs

    def _edit(self, repo: Repository, item: Issue, edits: dict[str, Any], actor: User,
              message: str | None, always: bool = False) -> Change | None:
        """Apply an edit; if it changed anything (or `always`), record and announce it."""
        diffs = self._assign(repo, item, edits)
        if not diffs and not always:
            return None
        now = self._now()
        self._next_change_id += 1
        c = Comment(id=self._take_comment_id(), raw=message, user=actor, created_on=now,
                    change_id=self._next_change_id)
        change = Change(id=self._next_change_id, user=actor, created_on=now,
                        changes=rest_changes(diffs), message_raw=message, comment_id=c.id)
        item.comments[c.id] = c
        item.changes.append(change)
        item.updated_on = now
        self._fire(repo, "issue:updated", {
            "actor": payloads.user(actor, self.public_url),
            "issue": payloads.issue(repo, item, self.public_url),
            "repository": payloads.repository_webhook(repo, self.public_url),
            "changes": webhook_changes(diffs, self.public_url),
            "comment": payloads.comment(repo, item, c, self.public_url, with_issue=False),
        })
        return change


def _comment_raw(body: Any) -> str:
    content = body.get("content") if isinstance(body, dict) else None
    raw = content.get("raw") if isinstance(content, dict) else None
    if not isinstance(raw, str) or not raw.strip():
        raise ApiError(400, "Bad request", fields={"content.raw": ["required key not provided"]})
    return raw
