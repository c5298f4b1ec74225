"""Webhook subscription operations of SimulatorState (/2.0/repositories/{ws}/{repo}/hooks).

Bodies: `url`, `description`, `active`, `events` (at least one, from Bitbucket's list),
`secret` (at most 128 characters; never returned, only `secret_set`). On update, an omitted
secret is kept and a null or empty one removes it. The `{uid}` in paths may come with or
without braces.
"""
from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlsplit

from . import payloads
from .models import HOOK_EVENTS, ApiError, Hook, Repository

MAX_SECRET_LENGTH = 128


class HookOperations:
    """Mixed into SimulatorState; uses its lock, public_url, _now and _repo."""

    def list_hooks(self, workspace: str, slug: str) -> list[dict]:
        with self.lock:
            repo = self._repo(workspace, slug)
            return [payloads.hook(repo, h, self.public_url) for h in repo.hooks.values()]

    def get_hook(self, workspace: str, slug: str, uid: str) -> dict:
        with self.lock:
            repo = self._repo(workspace, slug)
            return payloads.hook(repo, _find(repo, uid), self.public_url)

    def create_hook(self, workspace: str, slug: str, body: Any) -> dict:
        with self.lock:
            repo = self._repo(workspace, slug)
            fields = _validate(body, creating=True)
            h = Hook(uuid=str(uuid.uuid4()), url=fields["url"],
                     description=fields.get("description", ""),
                     active=fields.get("active", True), events=fields["events"],
                     secret=fields.get("secret") or None, created_at=self._now())
            repo.hooks[h.uuid] = h
            return payloads.hook(repo, h, self.public_url)

    def update_hook(self, workspace: str, slug: str, uid: str, body: Any) -> dict:
        with self.lock:
            repo = self._repo(workspace, slug)
            h = _find(repo, uid)
            fields = _validate(body, creating=False)
            for name in ("url", "description", "active", "events"):
                if name in fields:
                    setattr(h, name, fields[name])
            if "secret" in fields:
                h.secret = fields["secret"] or None
            return payloads.hook(repo, h, self.public_url)

    def delete_hook(self, workspace: str, slug: str, uid: str) -> None:
        with self.lock:
            repo = self._repo(workspace, slug)
            del repo.hooks[_find(repo, uid).uuid]


def _find(repo: Repository, uid: str) -> Hook:
    found = repo.hooks.get(uid.strip().strip("{}").lower())
    if found is None:
        raise ApiError(404, "Webhook not found.")
    return found


def _validate(body: Any, creating: bool) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "Bad request", detail="The request body must be a JSON object.")
    errors: dict[str, list[str]] = {}
    fields: dict[str, Any] = {}
    if "url" in body or creating:
        url = body.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.netloc:
            errors["url"] = ["Enter a valid URL."]
        fields["url"] = url
    if "events" in body or creating:
        events = body.get("events")
        if not isinstance(events, list) or not events:
            errors["events"] = ["at least one event is required"]
        else:
            unknown = [e for e in events if e not in HOOK_EVENTS]
            if unknown:
                errors["events"] = [f"unknown event(s): {', '.join(map(str, unknown))}"]
            fields["events"] = list(dict.fromkeys(events))    # unique, in the given order
    if "description" in body:
        if not isinstance(body["description"], str):
            errors["description"] = ["description must be a string"]
        fields["description"] = body["description"]
    if "active" in body:
        if not isinstance(body["active"], bool):
            errors["active"] = ["active must be true or false"]
        fields["active"] = body["active"]
    if "secret" in body:
        secret = body["secret"]
        if secret is not None and not isinstance(secret, str):
            errors["secret"] = ["secret must be a string or null"]
        elif secret and len(secret) > MAX_SECRET_LENGTH:
            errors["secret"] = [f"Ensure this value has at most {MAX_SECRET_LENGTH} characters."]
        fields["secret"] = secret
    if errors:
        raise ApiError(400, "Bad request", fields=errors)
    return fields
