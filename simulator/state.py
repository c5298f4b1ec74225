"""The simulator's in-memory Bitbucket: one store, one lock, and the webhooks its edits fire.

`SimulatorState` is what the Flask app serves and what tests drive directly. Its methods take
and return JSON-ready dicts (the API's bodies) and raise `ApiError` for what Bitbucket answers
with an error envelope. Everything runs under `self.lock`, so the threaded server can call in
from many threads, and a payload is always a consistent snapshot.

The operations live in mixins beside this file: issues.py (issues, changes, comments,
attachments), hooks.py (webhook subscriptions) and users.py (accounts and the principals behind
credentials); this module holds the store, repositories, event firing and the test-facing
records.
"""
from __future__ import annotations

import json
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import httpx2

from . import payloads
from .authorize import Consumers
from .delivery import Delivery, Dispatcher, Outgoing
from .faults import FaultQueue
from .hooks import HookOperations
from .issues import IssueOperations
from .models import FIRST_CHANGE_ID, FIRST_COMMENT_ID, ApiError, Repository, User
from .oauth import TokenStore
from .ratelimit import RateLimiter
from .users import UserOperations, derived_account_id, stable_uuid

# Bitbucket removed Cloud issues (and their API) on this date; the 410 says so.
TRACKER_REMOVED_DETAIL = ("Bitbucket Cloud issues and wikis were removed on 2026-08-20. "
                          "This repository's issue tracker is no longer available.")


class LoggedRequest(NamedTuple):
    method: str
    path: str
    status: int


@dataclass(frozen=True)
class FiredEvent:
    """A webhook event the simulator fired (whether or not any hook received it)."""

    event_key: str
    repository: str
    payload: dict


class SimulatorState(IssueOperations, HookOperations, UserOperations):
    def __init__(self, public_url: str = "http://localhost", deliver_webhooks: bool = True,
                 transport: httpx2.BaseTransport | None = None) -> None:
        self.public_url = public_url.rstrip("/")
        self.lock = threading.RLock()
        self.faults = FaultQueue()
        self.tokens = TokenStore()
        self.consumers = Consumers()             # OAuth consumers and their codes
        self.token_ttl: float = 3600
        self.rate_limit_per_hour: int | None = None     # see ratelimit.py; off by default
        self.rate_limiter = RateLimiter()
        self.request_log: list[LoggedRequest] = []
        self.events: list[FiredEvent] = []
        self._dispatcher = Dispatcher(transport) if deliver_webhooks else None
        self._repos: dict[str, Repository] = {}
        self._users: dict[str, User] = {}              # by uuid (with braces)
        self._removed_trackers: set[str] = set()
        self._downloads: dict[str, tuple[bytes, str, str]] = {}   # one-time attachment URLs
        self._next_comment_id = FIRST_COMMENT_ID
        self._next_change_id = FIRST_CHANGE_ID
        self._last_now = datetime.min.replace(tzinfo=timezone.utc)

    # -- test-facing records and lifecycle -------------------------------------------------

    @property
    def deliveries(self) -> list[Delivery]:
        """Every delivery attempt (and drop), oldest first."""
        return list(self._dispatcher.records) if self._dispatcher else []

    @property
    def refresh_count(self) -> int:
        return self.tokens.refresh_count

    def wait_for_deliveries(self, timeout: float = 10.0) -> bool:
        """Block until every fired webhook was delivered or given up; False on timeout."""
        return self._dispatcher.wait(timeout) if self._dispatcher else True

    def close(self) -> None:
        """Stop the delivery thread (after what is queued has been tried)."""
        if self._dispatcher:
            self._dispatcher.close()

    def __enter__(self) -> "SimulatorState":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def reset(self) -> None:
        """Forget everything: repositories, users, tokens, consumers, faults, logs and records."""
        self.wait_for_deliveries()     # so no delivery from before lands after the reset
        with self.lock:
            self._repos.clear()
            self._users.clear()
            self._removed_trackers.clear()
            self._downloads.clear()
            self.request_log.clear()
            self.events.clear()
            self.tokens.clear()
            self.consumers.clear()
            self.faults.clear()
            self.token_ttl = 3600
            self.rate_limit_per_hour = None
            self.rate_limiter.clear()
            self._next_comment_id = FIRST_COMMENT_ID
            self._next_change_id = FIRST_CHANGE_ID
            if self._dispatcher:
                self._dispatcher.clear_records()

    def log_request(self, method: str, path: str, status: int) -> None:
        with self.lock:
            self.request_log.append(LoggedRequest(method, path, status))

    def _now(self) -> datetime:
        """The current UTC time, strictly increasing, so every edit has its own timestamp."""
        now = datetime.now(timezone.utc)
        if now <= self._last_now:
            now = self._last_now + timedelta(microseconds=1)
        self._last_now = now
        return now

    # -- repositories ----------------------------------------------------------------------

    def create_repository(self, workspace: str, slug: str, has_issues: bool = True,
                          is_private: bool = True, description: str = "") -> dict:
        """Create a repository. (Over HTTP `has_issues` defaults to false, as on Bitbucket;
        here it defaults to true, since tests nearly always want a tracker.)"""
        with self.lock:
            full_name = f"{workspace}/{slug}"
            if full_name in self._repos:
                raise ApiError(400, "Repository with this Slug and Owner already exists.")
            now = self._now()
            # The workspace is the owner; it is not a user one could assign issues to.
            owner = User(uuid=stable_uuid("workspace", workspace), display_name=workspace,
                         nickname=workspace, account_id=derived_account_id("workspace", workspace))
            repo = Repository(workspace=workspace, slug=slug,
                              uuid=stable_uuid("repository", full_name), owner=owner,
                              created_on=now, updated_on=now, has_issues=has_issues,
                              is_private=is_private, description=description)
            self._repos[full_name] = repo
            return payloads.repository(repo, self.public_url)

    def get_repository(self, workspace: str, slug: str) -> dict:
        with self.lock:
            return payloads.repository(self._repo(workspace, slug), self.public_url)

    def update_repository(self, workspace: str, slug: str, body: dict) -> dict:
        with self.lock:
            repo = self._repo(workspace, slug)
            if isinstance(body.get("has_issues"), bool):
                repo.has_issues = body["has_issues"]
            if isinstance(body.get("is_private"), bool):
                repo.is_private = body["is_private"]
            if isinstance(body.get("description"), str):
                repo.description = body["description"]
            repo.updated_on = self._now()
            return payloads.repository(repo, self.public_url)

    def delete_repository(self, workspace: str, slug: str) -> None:
        with self.lock:
            self._repo(workspace, slug)
            del self._repos[f"{workspace}/{slug}"]

    def remove_tracker(self, full_name: str) -> None:
        """From now on every issue endpoint of this repository answers 410 Gone."""
        with self.lock:
            self._removed_trackers.add(full_name)

    def issue_download(self, data: bytes, content_type: str, name: str) -> str:
        """A one-time token for an attachment download (Bitbucket redirects to such a URL)."""
        token = secrets.token_urlsafe(16)
        with self.lock:
            self._downloads[token] = (data, content_type, name)
        return token

    def take_download(self, token: str) -> tuple[bytes, str, str] | None:
        with self.lock:
            return self._downloads.pop(token, None)

    def _repo(self, workspace: str, slug: str) -> Repository:
        repo = self._repos.get(f"{workspace}/{slug}")
        if repo is None:
            raise ApiError(404, f"Repository {workspace}/{slug} not found")
        return repo

    def _tracker(self, workspace: str, slug: str) -> Repository:
        """The repository, if its issue tracker is usable (410 after removal, else 404)."""
        if f"{workspace}/{slug}" in self._removed_trackers:
            raise ApiError(410, "Issue tracker removed.", detail=TRACKER_REMOVED_DETAIL)
        repo = self._repo(workspace, slug)
        if not repo.has_issues:
            raise ApiError(404, "Repository has no issue tracker.")
        return repo

    # -- webhooks --------------------------------------------------------------------------

    def _fire(self, repo: Repository, event_key: str, payload: dict) -> None:
        """Send an event to every active hook subscribed to it (called under the lock, so
        events are queued in the order the edits happened)."""
        self.events.append(FiredEvent(event_key, repo.full_name, payload))
        if self._dispatcher is None:
            return
        body = json.dumps(payload).encode()
        for hook in repo.hooks.values():
            if not hook.active or event_key not in hook.events:
                continue
            out = Outgoing(event_key=event_key, hook_uuid=hook.uuid, url=hook.url,
                           secret=hook.secret, body=body, request_uuid=str(uuid.uuid4()))
            if self.faults.take_webhook_drop():
                self._dispatcher.record_drop(out, "dropped by fault injection")
            else:
                self._dispatcher.submit(out)
