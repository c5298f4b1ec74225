"""The simulator's in-memory Bitbucket: one store, one lock, and the webhooks its edits fire.

`SimulatorState` is what the Flask app serves and what tests drive directly. Its methods take
and return JSON-ready dicts (the API's bodies) and raise `ApiError` for what Bitbucket answers
with an error envelope. Everything runs under `self.lock`, so the threaded server can call in
from many threads, and a payload is always a consistent snapshot.

The operations live in two mixins beside this file: issues.py (issues, changes, comments,
attachments) and hooks.py (webhook subscriptions); this module holds the store, users,
repositories, event firing and the test-facing records.
"""
from __future__ import annotations

import hashlib
import json
import secrets
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import NamedTuple

import httpx2

from . import payloads
from .delivery import Delivery, Dispatcher, Outgoing
from .faults import FaultQueue
from .hooks import HookOperations
from .issues import IssueOperations
from .models import FIRST_CHANGE_ID, FIRST_COMMENT_ID, ApiError, Repository, User
from .oauth import ACCESS_PREFIX, TokenStore
from .ratelimit import RateLimiter

# Names are derived into stable UUIDs within this namespace, so the same credential is the
# same user in every run (and in every test).
_NAMESPACE = uuid.UUID("6f1b7a4e-3c55-4b8e-9a0e-2d7c1f0b5e11")

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


def _stable_uuid(kind: str, name: str) -> str:
    return "{" + str(uuid.uuid5(_NAMESPACE, f"{kind}:{name}")) + "}"


def _account_id(kind: str, name: str) -> str:
    # Shaped like a modern Atlassian account id ("712020:" + a UUID).
    return "712020:" + str(uuid.uuid5(_NAMESPACE, f"account:{kind}:{name}"))


class SimulatorState(IssueOperations, HookOperations):
    def __init__(self, public_url: str = "http://localhost", deliver_webhooks: bool = True,
                 transport: httpx2.BaseTransport | None = None) -> None:
        self.public_url = public_url.rstrip("/")
        self.lock = threading.RLock()
        self.faults = FaultQueue()
        self.tokens = TokenStore()
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
        """Forget everything: repositories, users, tokens, faults, logs and records."""
        self.wait_for_deliveries()     # so no delivery from before lands after the reset
        with self.lock:
            self._repos.clear()
            self._users.clear()
            self._removed_trackers.clear()
            self._downloads.clear()
            self.request_log.clear()
            self.events.clear()
            self.tokens.clear()
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

    # -- users -----------------------------------------------------------------------------

    def ensure_user(self, display_name: str, nickname: str | None = None,
                    user_uuid: str | None = None, account_id: str | None = None) -> dict:
        """Add (or find) a user, e.g. a human to assign issues to; returns its payload."""
        with self.lock:
            return payloads.user(self._user(display_name, nickname, user_uuid, account_id),
                                 self.public_url)

    def _user(self, display_name: str, nickname: str | None = None, uuid_: str | None = None,
              account_id: str | None = None) -> User:
        key = uuid_ or _stable_uuid("user", display_name)
        key = key if key.startswith("{") else "{" + key + "}"
        found = self._users.get(key)
        if found is None:
            found = User(uuid=key, display_name=display_name,
                         nickname=nickname or display_name.split("@")[0],
                         account_id=account_id or _account_id("user", key))
            self._users[key] = found
        return found

    def principal_for_basic(self, username: str) -> User:
        """The user behind Basic credentials (an Atlassian account email and an API token)."""
        with self.lock:
            return self._user(username, uuid_=_stable_uuid("basic", username),
                              account_id=_account_id("basic", username))

    def principal_for_bearer(self, token: str) -> User:
        """The user behind a bearer token; raises 401 for our own expired or unknown tokens."""
        if token.startswith(ACCESS_PREFIX):
            client_id, expired = self.tokens.client_for(token)
            if client_id is None:
                raise ApiError(401, "Access token is invalid.")
            if expired:
                raise ApiError(401, "Access token expired. Use your refresh token to obtain "
                                    "a new access token.")
            name = f"OAuth consumer {client_id}"
            kind = "consumer:" + client_id
        else:
            # A token the simulator did not issue (an API or access token set up by hand):
            # accepted, as a user of its own.
            digest = hashlib.sha256(token.encode()).hexdigest()[:12]
            name, kind = f"Token user {digest}", "token:" + digest
        with self.lock:
            return self._user(name, nickname=name.replace(" ", "-").lower(),
                              uuid_=_stable_uuid("bearer", kind),
                              account_id=_account_id("bearer", kind))

    def user_payload(self, user: User) -> dict:
        with self.lock:
            return payloads.user(user, self.public_url)

    def find_user(self, reference: str) -> dict:
        """GET /2.0/users/{uuid or account_id}."""
        with self.lock:
            return payloads.user(self._find_user({"uuid": reference, "account_id": reference},
                                                 create=False), self.public_url)

    def _find_user(self, spec: dict, create: bool = True) -> User:
        """A user referenced by uuid, account_id or username/nickname; created if unknown."""
        wanted_uuid = spec.get("uuid")
        if wanted_uuid:
            braced = wanted_uuid if wanted_uuid.startswith("{") else "{" + wanted_uuid + "}"
            if braced in self._users:
                return self._users[braced]
        for user in self._users.values():
            if spec.get("account_id") and user.account_id == spec["account_id"]:
                return user
            name = spec.get("username") or spec.get("nickname")
            if name and user.nickname == name:
                return user
        if not create:
            raise ApiError(404, "User not found.")
        if wanted_uuid:
            return self._user(f"User {wanted_uuid.strip('{}')[:8]}", uuid_=wanted_uuid)
        if spec.get("account_id"):
            account = spec["account_id"]
            return self._user(f"User {account[-8:]}", uuid_=_stable_uuid("account", account),
                              account_id=account)
        name = spec.get("username") or spec.get("nickname")
        return self._user(name, nickname=name, uuid_=_stable_uuid("nickname", name))

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
            owner = User(uuid=_stable_uuid("workspace", workspace), display_name=workspace,
                         nickname=workspace, account_id=_account_id("workspace", workspace))
            repo = Repository(workspace=workspace, slug=slug,
                              uuid=_stable_uuid("repository", full_name), owner=owner,
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
