"""Bitbucket credentials: the secret kinds, their storage in the `credentials` table
(worker.db.credentials), and the OAuth refresh protocol.

A row holds `kind`, a non-secret `key` (what the rate-limit budget is counted against: all
users of one key share Bitbucket's 1,000 requests/hour) and `secret`, the Fernet ciphertext
(worker.crypto) of a JSON object with the secret parts. Secrets never appear in a repr, an
error message or a log line.

OAuth refresh tokens rotate: each refresh spends the old one. So a refresh happens under a
row lock (`SELECT ... FOR UPDATE` on PostgreSQL; SQLite's `BEGIN IMMEDIATE`, set up by
worker.db.session, serializes writers), re-reads the row after the lock is held, refreshes
only if the token is still stale (another process may just have refreshed it), and commits
the new tokens before anyone uses them. What cannot be helped: if the process dies after the
token endpoint answered and before the commit, the new refresh token is lost and the
credential must be authorized again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, ClassVar, Mapping, Union

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker import crypto
from worker.db.credentials import Credential
from worker.db.models import Connection, utcnow

from .urls import DEFAULT_TOKEN_URL

log = logging.getLogger("bbsync.bitbucket")

KINDS = ("api_token", "bearer", "oauth")
MAX_TOKEN_CHARS = 512
MAX_EMAIL_CHARS = 254


class CredentialNotFound(LookupError):
    """No credential with that id."""


def _check_token(token: Any, what: str) -> None:
    """Reject unusable tokens without ever echoing them."""
    if not isinstance(token, str) or not token:
        raise ValueError(f"the {what} is empty")
    if any(c.isspace() for c in token):
        raise ValueError(f"the {what} must not contain whitespace")
    if len(token) > MAX_TOKEN_CHARS:
        raise ValueError(f"the {what} is longer than {MAX_TOKEN_CHARS} characters")
    if not token.isascii() or not token.isprintable():
        raise ValueError(f"the {what} must be printable ASCII")


@dataclass(frozen=True)
class ApiToken:
    """An Atlassian API token, sent as Basic auth with the account's email."""

    kind: ClassVar[str] = "api_token"
    email: str
    token: str = field(repr=False)

    @property
    def key(self) -> str:
        return f"api_token:{self.email.lower()}"


@dataclass(frozen=True)
class BearerToken:
    """A bearer token obtained elsewhere (e.g. an access token); not refreshed by us."""

    kind: ClassVar[str] = "bearer"
    token: str = field(repr=False)

    @property
    def key(self) -> str:
        return "bearer:" + hashlib.sha256(self.token.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class OAuthCredential:
    """An OAuth 2.0 consumer and its current tokens. `expires_at` is epoch seconds.
    Without a refresh token, a new access token is fetched with the client_credentials grant."""

    kind: ClassVar[str] = "oauth"
    client_id: str
    client_secret: str = field(repr=False)
    token_url: str = DEFAULT_TOKEN_URL
    access_token: str | None = field(default=None, repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: float | None = None

    @property
    def key(self) -> str:
        # All users of one consumer share its budget at Bitbucket.
        return f"oauth:{self.client_id}"

    def stale(self, now: float, leeway: float) -> bool:
        """No access token, or one that expires within `leeway` seconds."""
        if not self.access_token:
            return True
        return self.expires_at is not None and self.expires_at - leeway <= now

    def with_token(self, response: Mapping[str, Any], now: float) -> OAuthCredential:
        """These credentials after a token endpoint answered `response`."""
        access = response.get("access_token")
        if not isinstance(access, str) or not access:
            raise ValueError("the token endpoint answered without an access_token")
        expires_in = response.get("expires_in")
        if expires_in is not None:
            expires_at: float | None = now + float(expires_in)
        else:
            expires_at = float(response["expires_at"]) if response.get("expires_at") else None
        return replace(self, access_token=access, expires_at=expires_at,
                       refresh_token=response.get("refresh_token") or self.refresh_token)


Secret = Union[ApiToken, BearerToken, OAuthCredential]
_CLASSES: dict[str, type] = {c.kind: c for c in (ApiToken, BearerToken, OAuthCredential)}


def parse_api_token(value: str) -> ApiToken:
    """`EMAIL:TOKEN` (the Atlassian account email, a colon, the API token) -> ApiToken.
    Error messages never repeat the input: it may be the token itself."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError("expected EMAIL:TOKEN (the Atlassian account email, a colon, the API "
                         "token)")
    email, _, token = value.partition(":")
    check_email(email)
    _check_token(token, "API token after ':'")
    return ApiToken(email=email, token=token)


def check_email(email: str) -> None:
    local, at, domain = email.partition("@")
    if (not at or not local or not domain or "@" in domain or len(email) > MAX_EMAIL_CHARS
            or any(c.isspace() for c in email) or not email.isprintable()):
        raise ValueError("the part before ':' must be the Atlassian account email, like "
                         "name@example.com")


def bearer_token(token: str) -> BearerToken:
    _check_token(token, "bearer token")
    return BearerToken(token=token)


def oauth_credential(client_id: str, client_secret: str, *, token_url: str = DEFAULT_TOKEN_URL,
                     refresh_token: str | None = None, access_token: str | None = None,
                     expires_at: float | None = None) -> OAuthCredential:
    """Validated OAuth consumer credentials (and tokens from an authorization, if any)."""
    if not isinstance(client_id, str) or not client_id or not client_id.isprintable() \
            or any(c.isspace() for c in client_id) or len(client_id) > 200:
        raise ValueError("the OAuth client id must be 1-200 printable characters, no spaces")
    _check_token(client_secret, "OAuth client secret")
    for token, what in ((refresh_token, "refresh token"), (access_token, "access token")):
        if token is not None:
            _check_token(token, f"OAuth {what}")
    if not isinstance(token_url, str) or not token_url.startswith(("https://", "http://")) \
            or "?" in token_url:
        raise ValueError("the OAuth token URL must be an http(s) URL without a query")
    return OAuthCredential(client_id=client_id, client_secret=client_secret,
                           token_url=token_url, refresh_token=refresh_token,
                           access_token=access_token, expires_at=expires_at)


def encode_secret(secret: Secret) -> bytes:
    """The ciphertext stored in `credentials.secret` (Fernet, worker.crypto, of JSON)."""
    return crypto.encrypt(json.dumps(asdict(secret), sort_keys=True))


def decode_secret(kind: str, ciphertext: bytes) -> Secret:
    cls = _CLASSES.get(kind)
    if cls is None:
        raise ValueError(f"unknown credential kind {kind!r}")
    return cls(**json.loads(crypto.decrypt(ciphertext)))


_encode, _decode = encode_secret, decode_secret      # older private names, still imported


def store_for_connection(session: Session, conn: Connection, secret: Secret) -> None:
    """Make `secret` the connection's credential (in the caller's transaction): its row is
    rewritten in place, or made if it has none."""
    row = session.get(Credential, conn.credential_id) if conn.credential_id else None
    if row is None:
        row = Credential(kind=secret.kind)
        session.add(row)
    row.kind, row.key, row.secret = secret.kind, secret.key, encode_secret(secret)
    session.flush()
    conn.credential_id = row.id


@dataclass(frozen=True)
class StoredCredential:
    id: int
    key: str
    secret: Secret

    @property
    def kind(self) -> str:
        return self.secret.kind


#: Called with the current OAuth credentials while the row lock is held; returns them with
#: fresh tokens (it talks to the token endpoint and nothing else).
Refresher = Callable[[OAuthCredential], OAuthCredential]


class CredentialStore:
    def __init__(self, sessions: sessionmaker[Session], *, clock: Callable[[], float] = time.time):
        self._sessions = sessions
        self._clock = clock

    def __repr__(self) -> str:
        return "CredentialStore()"

    def add(self, secret: Secret) -> int:
        """Store a credential (encrypted); returns its id."""
        with self._sessions() as session, session.begin():
            row = Credential(kind=secret.kind, key=secret.key, secret=_encode(secret))
            session.add(row)
            session.flush()
            return row.id

    def load(self, credential_id: int) -> StoredCredential:
        with self._sessions() as session:
            row = session.get(Credential, credential_id)
            if row is None:
                raise CredentialNotFound(f"no credential with id {credential_id}")
            return StoredCredential(row.id, row.key, _decode(row.kind, row.secret))

    def update(self, credential_id: int, secret: Secret) -> None:
        """Replace a credential's secret (a new API token, a re-authorized consumer)."""
        with self._sessions() as session, session.begin():
            row = session.get(Credential, credential_id, with_for_update=True)
            if row is None:
                raise CredentialNotFound(f"no credential with id {credential_id}")
            row.kind, row.key, row.secret = secret.kind, secret.key, _encode(secret)

    def delete(self, credential_id: int) -> None:
        with self._sessions() as session, session.begin():
            row = session.get(Credential, credential_id)
            if row is not None:
                session.delete(row)

    def refresh_oauth(self, credential_id: int, refresher: Refresher, *, leeway: float = 60.0,
                      rejected_access_token: str | None = None) -> OAuthCredential:
        """Fresh OAuth credentials, refreshed by at most one process at a time.

        Under the row lock: re-read; if the stored access token is still good (not within
        `leeway` of expiry and not the one Bitbucket just rejected), another process has
        refreshed it: return it. Otherwise call `refresher`, and commit its result before
        returning it, so the rotated refresh token is safe before any request uses it.
        """
        with self._sessions() as session, session.begin():
            row = session.scalar(select(Credential).where(Credential.id == credential_id)
                                 .with_for_update())
            if row is None:
                raise CredentialNotFound(f"no credential with id {credential_id}")
            if row.kind != "oauth":
                raise ValueError(f"credential {credential_id} is {row.kind}, not oauth")
            current = _decode(row.kind, row.secret)
            assert isinstance(current, OAuthCredential)
            rejected = (rejected_access_token is not None
                        and current.access_token == rejected_access_token)
            if not rejected and not current.stale(self._clock(), leeway):
                log.info("bitbucket.oauth_refresh_skipped credential=%s key=%s "
                         "reason=fresh_in_store", credential_id, row.key)
                return current
            fresh = refresher(current)
            row.secret = _encode(fresh)
            row.updated_at = utcnow()
        log.info("bitbucket.oauth_refreshed credential=%s key=%s reason=%s expires_in=%s",
                 credential_id, fresh.key, "rejected" if rejected else "expiring",
                 None if fresh.expires_at is None else round(fresh.expires_at - self._clock()))
        return fresh
