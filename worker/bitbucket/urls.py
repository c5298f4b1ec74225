"""Every Bitbucket REST path, in one place. Paths are relative to the API base URL
(`https://api.bitbucket.org/2.0/`), and built only from validated parts, so no caller's
string can steer a request somewhere else (`..`, `?`, `#`, `/` inside a slug).
"""
from __future__ import annotations

import re
from urllib.parse import urlsplit

DEFAULT_API_URL = "https://api.bitbucket.org/2.0"
DEFAULT_TOKEN_URL = "https://bitbucket.org/site/oauth2/access_token"
DEFAULT_AUTHORIZE_URL = "https://bitbucket.org/site/oauth2/authorize"
_OAUTH_PATHS = ("/site/oauth2/authorize", "/site/oauth2/access_token")

_PART = re.compile(r"[A-Za-z0-9_.-]{1,100}")

REPOSITORY = "repositories/{repo}"
HOOKS = REPOSITORY + "/hooks"
ISSUES = REPOSITORY + "/issues"
ISSUE = ISSUES + "/{issue_id}"
CHANGES = ISSUE + "/changes"
COMMENTS = ISSUE + "/comments"
ATTACHMENTS = ISSUE + "/attachments"


def repo(full_name: str) -> str:
    """Validate "workspace/repo_slug" and return it unchanged."""
    if not isinstance(full_name, str):
        raise ValueError("a repository is a 'workspace/repo_slug' string")
    workspace, sep, slug = full_name.partition("/")
    for part in (workspace, slug):
        if not sep or not _PART.fullmatch(part) or set(part) == {"."}:
            raise ValueError(f"repository {full_name!r} is not 'workspace/repo_slug'")
    return full_name


def issue_id(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"issue id must be a positive integer, not {value!r}")
    return value


def path(template: str, full_name: str, issue: int | None = None) -> str:
    """Fill a template: path(COMMENTS, "acme/widgets", 7)."""
    fields = {"repo": repo(full_name)}
    if "{issue_id}" in template:
        if issue is None:
            raise ValueError("this path needs an issue id")
        fields["issue_id"] = str(issue_id(issue))
    return template.format(**fields)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def hook(full_name: str, uid: str) -> str:
    """A webhook's path: its uuid (braces optional) in braces, as Bitbucket lists it."""
    bare = uid.strip().strip("{}").lower() if isinstance(uid, str) else ""
    if not _UUID.fullmatch(bare):
        raise ValueError(f"webhook id {uid!r} is not a UUID")
    return f"{path(HOOKS, full_name)}/%7B{bare}%7D"


def same_origin(url: str, base_url: str) -> bool:
    """Whether `url` (a `next` link) points at the API we were configured with, so our
    Authorization header is never sent to another host."""
    a, b = urlsplit(url), urlsplit(base_url)
    return (a.scheme.lower(), a.hostname, a.port) == (b.scheme.lower(), b.hostname, b.port)


def oauth_urls(api_url: str) -> tuple[str, str]:
    """(authorize URL, token URL) of the Bitbucket behind `api_url`: bitbucket.org's for the
    real API (api.bitbucket.org), and the same origin's /site/oauth2/... for any other (the
    simulator serves both from one host)."""
    parts = urlsplit(api_url)
    if parts.hostname == "api.bitbucket.org":
        return DEFAULT_AUTHORIZE_URL, DEFAULT_TOKEN_URL
    origin = f"{parts.scheme}://{parts.netloc}"
    authorize, token = (origin + p for p in _OAUTH_PATHS)
    return authorize, token
