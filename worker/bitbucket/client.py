"""BitbucketClient: every Bitbucket REST call goes through here.

One httpx2.Client per instance (make one per process and credential), with `base_url`,
explicit timeouts and an injectable transport (tests use httpx2.WSGITransport over the
simulator). Auth is an httpx2.Auth from auth.py. Every request that leaves, retries and the
OAuth retry after a 401 included, is first counted by the budget meter (an httpx2 request
event hook, so nothing can bypass it).

Retries are described in retry.py: 429 always; 5xx and lost connections for idempotent
methods, and for POSTs only with `retry_unsafe=True`; never other 4xx. A 410 raises
TrackerRemoved at once. Retrying is bounded by `max_attempts` and by `max_retry_seconds` of
total time (a wait that would cross it is not started: the last error is raised instead).

Errors are typed (errors.py). Log lines have stable names and key=value context, and never
a header, token or query string.
"""
from __future__ import annotations

import logging
import random
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

import httpx2

from . import urls
from .budget import BudgetMeter
from .errors import BitbucketError, Unavailable, error_from
from .retry import Backoff, retry_after, retryable_status, retryable_transport_error

log = logging.getLogger("bbsync.bitbucket")

DEFAULT_TIMEOUT = httpx2.Timeout(10, connect=5)
DEFAULT_PAGELEN = 100            # Bitbucket's maximum for issues, comments and attachments
USER_AGENT = "bbsync/0.1"


class BitbucketClient:
    def __init__(self, api_url: str, auth: httpx2.Auth, *,
                 transport: httpx2.BaseTransport | None = None,
                 budget: BudgetMeter | None = None, credential_key: str | None = None,
                 timeout: httpx2.Timeout = DEFAULT_TIMEOUT, max_attempts: int = 5,
                 max_retry_seconds: float = 60, sleep: Callable[[float], None] = time.sleep,
                 rng: Callable[[], float] = random.random,
                 clock: Callable[[], float] = time.monotonic,
                 backoff: Backoff = Backoff(), budget_max_wait: float | None = None) -> None:
        if max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        self._budget = budget
        self._credential_key = credential_key or getattr(auth, "credential_key", None)
        if budget is not None and not self._credential_key:
            raise ValueError("a budget needs the credential_key to count against")
        self._budget_max_wait = budget_max_wait
        self._max_attempts = max_attempts
        self._max_retry_seconds = max_retry_seconds
        self._sleep = sleep
        self._rng = rng
        self._clock = clock
        self._backoff = backoff
        self._base_url = api_url.rstrip("/") + "/"
        self._http = httpx2.Client(
            base_url=self._base_url, auth=auth, transport=transport, timeout=timeout,
            follow_redirects=False,
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            event_hooks={"request": [self._count]} if budget is not None else None)

    def __repr__(self) -> str:
        return f"BitbucketClient({self._base_url!r}, key={self._credential_key!r})"

    def longest_call_seconds(self) -> float:
        """An upper bound on how long one call may take, retries included: a retry starts only
        while `max_retry_seconds` have not passed, and the attempt it starts may send up to
        three requests (the call, an OAuth refresh, the call again after a 401), each waiting
        for the budget and then using its full timeouts. A claim on a write that must not be
        made twice has to outlast it (worker.sync.claims)."""
        t = self._http.timeout
        per_request = sum(x or 0 for x in (t.connect, t.read, t.write, t.pool))
        if self._budget is not None:
            per_request += self._budget_max_wait if self._budget_max_wait is not None else self._budget.max_wait
        return self._max_retry_seconds + 3 * per_request

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BitbucketClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- issues ------------------------------------------------------------------------------

    def get_issue(self, repo: str, issue_id: int) -> dict:
        return self._json("GET", urls.path(urls.ISSUE, repo, issue_id))

    def iter_issues(self, repo: str, q: str | None = None, sort: str | None = None,
                    pagelen: int = DEFAULT_PAGELEN) -> Iterator[dict]:
        """Issues matching the BBQL query `q`, ordered by `sort` (e.g. "-updated_on"),
        one page at a time."""
        params: dict[str, Any] = {"pagelen": pagelen}
        if q:
            params["q"] = q
        if sort:
            params["sort"] = sort
        return self._paginate(urls.path(urls.ISSUES, repo), params)

    def create_issue(self, repo: str, body: Mapping[str, Any], *,
                     retry_unsafe: bool = False) -> dict:
        return self._json("POST", urls.path(urls.ISSUES, repo), json=dict(body),
                          retry_unsafe=retry_unsafe)

    def update_issue(self, repo: str, issue_id: int, body: Mapping[str, Any]) -> dict:
        """PUT: partial (omitted fields are kept, null clears). Idempotent, so retried."""
        return self._json("PUT", urls.path(urls.ISSUE, repo, issue_id), json=dict(body))

    def post_change(self, repo: str, issue_id: int, changes: Mapping[str, Any],
                    message: str | None = None, *, retry_unsafe: bool = False) -> dict:
        """ONE call for a batch of field changes, recorded as one change on Bitbucket.

        `changes` maps change-API keys (state, priority, kind, title, content,
        assignee_account_id, component, milestone, version) to new values, either plain
        (`{"state": "resolved"}`) or already wrapped (`{"state": {"new": "resolved"}}`).
        Returns the change record."""
        body: dict[str, Any] = {"changes": {}}
        for key, value in changes.items():
            if isinstance(value, Mapping):
                if set(value) != {"new"}:
                    raise ValueError(f"change {key!r}: give the new value, or {{'new': value}}")
                body["changes"][key] = dict(value)
            else:
                body["changes"][key] = {"new": value}
        if message is not None:
            body["message"] = {"raw": message}
        if not body["changes"] and message is None:
            raise ValueError("post_change needs at least one change or a message")
        return self._json("POST", urls.path(urls.CHANGES, repo, issue_id), json=body,
                          retry_unsafe=retry_unsafe)

    def iter_changes(self, repo: str, issue_id: int,
                     pagelen: int = DEFAULT_PAGELEN) -> Iterator[dict]:
        """The issue's change records, oldest first."""
        return self._paginate(urls.path(urls.CHANGES, repo, issue_id), {"pagelen": pagelen})

    # -- comments and attachments -----------------------------------------------------------

    def iter_comments(self, repo: str, issue_id: int,
                      pagelen: int = DEFAULT_PAGELEN) -> Iterator[dict]:
        return self._paginate(urls.path(urls.COMMENTS, repo, issue_id), {"pagelen": pagelen})

    def create_comment(self, repo: str, issue_id: int, raw: str, *,
                       retry_unsafe: bool = False) -> dict:
        return self._json("POST", urls.path(urls.COMMENTS, repo, issue_id),
                          json={"content": {"raw": raw}}, retry_unsafe=retry_unsafe)

    def upload_attachments(self, repo: str, issue_id: int,
                           files: Sequence[tuple[str, bytes, str]], *,
                           retry_unsafe: bool = False) -> None:
        """multipart/form-data upload of (name, data, content type) files; a file named like
        an existing attachment replaces it (so a retry is harmless, but opt in anyway)."""
        if not files:
            raise ValueError("upload_attachments needs at least one file")
        parts = [("files", (name, data, content_type)) for name, data, content_type in files]
        self._request("POST", urls.path(urls.ATTACHMENTS, repo, issue_id), files=parts,
                      retry_unsafe=retry_unsafe)

    def iter_attachments(self, repo: str, issue_id: int,
                         pagelen: int = DEFAULT_PAGELEN) -> Iterator[dict]:
        return self._paginate(urls.path(urls.ATTACHMENTS, repo, issue_id), {"pagelen": pagelen})

    # -- repositories and webhooks -----------------------------------------------------------

    def create_repository(self, repo: str, *, has_issues: bool = True, is_private: bool = True,
                          description: str | None = None, retry_unsafe: bool = False) -> dict:
        body: dict[str, Any] = {"scm": "git", "has_issues": has_issues, "is_private": is_private}
        if description is not None:
            body["description"] = description
        return self._json("POST", urls.path(urls.REPOSITORY, repo), json=body,
                          retry_unsafe=retry_unsafe)

    def get_repository(self, repo: str) -> dict:
        return self._json("GET", urls.path(urls.REPOSITORY, repo))

    def create_hook(self, repo: str, url: str, secret: str, events: Sequence[str], *,
                    description: str = "bbsync", active: bool = True,
                    retry_unsafe: bool = False) -> dict:
        """A webhook signed with `secret` (sent in the body, as Bitbucket requires; never
        returned, never logged)."""
        body = {"url": url, "description": description, "active": active,
                "events": list(events), "secret": secret}
        return self._json("POST", urls.path(urls.HOOKS, repo), json=body,
                          retry_unsafe=retry_unsafe)

    def iter_hooks(self, repo: str) -> Iterator[dict]:
        return self._paginate(urls.path(urls.HOOKS, repo), {})

    def update_hook(self, repo: str, uid: str, body: Mapping[str, Any]) -> dict:
        """Change the given fields of a hook (an omitted `secret` is kept by Bitbucket)."""
        return self._json("PUT", urls.hook(repo, uid), json=dict(body))

    def delete_hook(self, repo: str, uid: str) -> None:
        self._request("DELETE", urls.hook(repo, uid))

    # -- plumbing ----------------------------------------------------------------------------

    def _count(self, request: httpx2.Request) -> None:
        """Request event hook: every request that leaves is counted (and may wait) first."""
        assert self._budget is not None and self._credential_key is not None
        self._budget.acquire(self._credential_key, max_wait=self._budget_max_wait)

    def _json(self, method: str, path: str, **kwargs: Any) -> dict:
        response = self._request(method, path, **kwargs)
        try:
            body = response.json()
        except ValueError:
            raise BitbucketError("Bitbucket answered with a body that is not JSON",
                                 status=response.status_code, method=method,
                                 path=self._shown(path)) from None
        if not isinstance(body, dict):
            raise BitbucketError("Bitbucket answered with JSON that is not an object",
                                 status=response.status_code, method=method, path=self._shown(path))
        return body

    def _paginate(self, path: str, params: dict[str, Any]) -> Iterator[dict]:
        """Yield `values` page by page, following `next` as an opaque URL (checked to be on
        our API's origin, so the Authorization header never goes anywhere else)."""
        url: str | None = path
        page_params: dict[str, Any] | None = params or None
        seen: set[str] = set()
        while url is not None:
            # `next` already carries every parameter; passing params (even {}) would replace
            # its query string.
            body = self._json("GET", url, params=page_params)
            values = body.get("values")
            if not isinstance(values, list):
                raise BitbucketError("a page without `values`", method="GET", path=self._shown(url))
            yield from values
            url, page_params = body.get("next"), None
            if url is not None:
                if not isinstance(url, str) or not urls.same_origin(url, self._base_url):
                    raise BitbucketError("a `next` link off the API's origin was not followed",
                                         method="GET", path=self._shown(path))
                if url in seen:
                    raise BitbucketError("pagination went round in a circle", method="GET",
                                         path=self._shown(path))
                seen.add(url)

    def _shown(self, url: str) -> str:
        """The request's full path, fit for logs and errors: no host, no query string."""
        return httpx2.URL(self._base_url).join(url).path

    def _request(self, method: str, url: str, *, retry_unsafe: bool = False,
                 **kwargs: Any) -> httpx2.Response:
        shown = self._shown(url)
        started = self._clock()
        attempt = 0
        while True:
            attempt += 1
            wait: float | None = None
            try:
                response = self._http.request(method, url, **kwargs)
            except httpx2.TransportError as exc:
                error: BitbucketError = Unavailable(
                    f"no response from Bitbucket ({type(exc).__name__})", method=method,
                    path=shown)
                retryable = retryable_transport_error(exc, method, retry_unsafe)
                status_shown = type(exc).__name__
            else:
                if response.status_code < 400:
                    return response
                error = error_from(response, method, shown)
                retryable = retryable_status(response.status_code, method, retry_unsafe)
                wait = retry_after(response)
                error.retry_after = wait
                status_shown = str(response.status_code)
            if not retryable:
                raise error
            if wait is None:
                wait = self._backoff.delay(attempt, self._rng)
            elapsed = self._clock() - started
            if attempt >= self._max_attempts or elapsed + wait > self._max_retry_seconds:
                log.warning("bitbucket.gave_up method=%s path=%s status=%s attempts=%d "
                            "elapsed=%.1f", method, shown, status_shown, attempt, elapsed)
                raise error
            log.info("bitbucket.retry method=%s path=%s status=%s attempt=%d delay=%.2f",
                     method, shown, status_shown, attempt + 1, wait)
            self._sleep(wait)
