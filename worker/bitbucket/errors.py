"""Typed Bitbucket errors. Callers catch these, never status codes.

Every error pickles (Celery serializes the exceptions it retries on) and carries only
non-secret context: status, message, method, path (no query string, never a token).
"""
from __future__ import annotations

from typing import Any

import httpx2


class BitbucketError(Exception):
    """Any failure talking to Bitbucket. `status` is the HTTP status, or None when no
    response arrived; `message` is Bitbucket's own message where it sent one."""

    def __init__(self, message: str, *, status: int | None = None, detail: str | None = None,
                 fields: dict[str, Any] | None = None, method: str | None = None,
                 path: str | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.detail = detail
        self.fields = fields or {}
        self.method = method
        self.path = path
        self.retry_after = retry_after

    def __str__(self) -> str:
        parts = [self.message]
        if self.detail:
            parts.append(f"({self.detail})")
        if self.fields:
            parts.append("fields: " + "; ".join(f"{k}: {_joined(v)}"
                                                for k, v in sorted(self.fields.items())))
        where = " ".join(str(p) for p in (self.status, self.method, self.path) if p)
        if where:
            parts.append(f"[{where}]")
        return " ".join(parts)


def _joined(value: Any) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


class RateLimited(BitbucketError):
    """429: the credential's hourly budget at Bitbucket is spent (or a proxy throttled us).
    `retry_after` is set only when the response carried a Retry-After header."""


class NotFound(BitbucketError):
    """404: the repository, issue, comment or hook does not exist (or is not visible)."""


class TrackerRemoved(BitbucketError):
    """410: the repository's issue tracker was removed. Atlassian removed Bitbucket Cloud
    issues, API included, on 2026-08-20. Expected, permanent, never retried."""


class AuthFailed(BitbucketError):
    """401/403, or the OAuth token endpoint refused us: the credential is wrong, expired,
    revoked or lacks a scope. A person has to act; retrying does not help."""


class Conflict(BitbucketError):
    """409."""


class BadRequest(BitbucketError):
    """400: Bitbucket rejected the body; `fields` maps each offending field to its messages."""


class ServerError(BitbucketError):
    """5xx from Bitbucket or its edge."""


class Unavailable(BitbucketError):
    """No response: connection refused, reset or timed out (after the retries allowed)."""


class BudgetExhausted(BitbucketError):
    """Our own meter: the credential's hourly budget would need a longer wait than the caller
    allows. No request was sent. `retry_after` says when to try again; `key` names the
    credential (a non-secret identifier); `used` is the count in the rolling hour."""

    def __init__(self, message: str, *, key: str | None = None, used: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.key = key
        self.used = used


#: The errors worth retrying later, for Celery tasks' explicit retry list. Everything else is
#: permanent (bad input, missing objects, credentials, a removed tracker) or a bug.
#: BudgetExhausted is here because the work is still wanted: retry it with
#: `countdown=exc.retry_after` once the hour has room.
RETRYABLE: tuple[type[BitbucketError], ...] = (RateLimited, ServerError, Unavailable,
                                                BudgetExhausted)

_BY_STATUS: dict[int, type[BitbucketError]] = {
    400: BadRequest, 401: AuthFailed, 403: AuthFailed, 404: NotFound, 409: Conflict,
    410: TrackerRemoved, 429: RateLimited,
}


def error_class(status: int) -> type[BitbucketError]:
    """The error type for an HTTP error status."""
    if status >= 500:
        return ServerError
    return _BY_STATUS.get(status, BitbucketError)


_MAX_MESSAGE_CHARS = 300


def error_from(response: httpx2.Response, method: str, path: str) -> BitbucketError:
    """The typed error for an error response, with Bitbucket's error envelope read:
    {"type": "error", "error": {"message", "detail", "fields"}}."""
    status = response.status_code
    message = detail = None
    fields: dict[str, Any] | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        envelope = body["error"]
        message = envelope.get("message")
        detail = envelope.get("detail")
        fields = envelope.get("fields") if isinstance(envelope.get("fields"), dict) else None
    elif not isinstance(body, (dict, list)):
        text = response.text.strip()
        message = text[:_MAX_MESSAGE_CHARS] if text else None
    if not message:
        message = f"HTTP {status} {response.reason_phrase}".strip()
    return error_class(status)(str(message), status=status,
                               detail=str(detail) if detail else None,
                               fields=fields, method=method, path=path)
