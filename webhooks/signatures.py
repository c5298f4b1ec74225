"""Bitbucket webhook signatures: `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>`."""
from __future__ import annotations

import hashlib
import hmac
from typing import Iterable

PREFIX = "sha256="


def sign(secret: str, body: bytes) -> str:
    return PREFIX + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(header: str | None, body: bytes, secrets: Iterable[str]) -> bool:
    """True if the header is a valid signature of body under any of the secrets.

    Every secret is tried, whatever matched, and each comparison is constant-time, so the
    response time says nothing about which secret (or which prefix of a signature) was right.
    """
    if not header or not header.startswith(PREFIX):
        return False
    given = header.encode("ascii", "replace")
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(given, sign(secret, body).encode("ascii"))
    return ok
