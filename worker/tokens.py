"""API tokens: made, listed, revoked, and checked on every `/api/...` request.

A token is 256 random bits, shown once when it is made; only its SHA-256 is stored. Its scope is
every connection (admin) or the connections named when it was made; a read-only token may only
read. Revoking takes effect on the next request in every web process: each request looks its
token up (one indexed query).
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from worker import connections
from worker.db.models import utcnow
from worker.db.tokens import ApiToken

PREFIX = "bbs_"
TOKEN_RE = re.compile(r"^bbs_[A-Za-z0-9_-]{43}$")  # 32 bytes, urlsafe base64 without padding
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
#: last_used_at is written at most this often per token (not one write per request).
TOUCH_EVERY = timedelta(minutes=1)


class TokenError(ValueError):
    """A token cannot be made or revoked as asked; the message says why."""


@dataclass(frozen=True)
class Principal:
    """Who a request is: the token's name and what it may see and do."""
    name: str
    admin: bool
    read_only: bool
    connection_ids: frozenset[int]

    def sees(self, connection_id: int | None) -> bool:
        return self.admin or connection_id in self.connection_ids


def digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create(session: Session, name: str, *, admin: bool, connection_names: tuple[str, ...] = (),
           read_only: bool = False) -> str:
    """Make a token and return it (the only time it is seen)."""
    if not NAME_RE.fullmatch(name or ""):
        raise TokenError(f"token name {name!r}: use 1-64 letters, digits, _ . @ or -")
    if admin == bool(connection_names):
        raise TokenError("a token is either --admin or scoped to one or more --connection")
    if session.scalar(select(ApiToken.id).where(ApiToken.name == name)) is not None:
        raise TokenError(f"a token named {name!r} exists already (revoke it, or pick another name)")
    scope = []
    for conn_name in dict.fromkeys(connection_names):
        conn = connections.get(session, conn_name)
        if conn is None:
            raise TokenError(f"no connection named {conn_name!r}")
        scope.append(conn)
    token = PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, token_hash=digest(token), admin=admin, read_only=read_only,
                         connections=scope))
    session.flush()
    return token


def revoke(session: Session, name: str) -> None:
    row = session.scalar(select(ApiToken).where(ApiToken.name == name)) if NAME_RE.fullmatch(name or "") else None
    if row is None:
        raise TokenError(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()


def list_all(session: Session) -> list[ApiToken]:
    return list(session.scalars(select(ApiToken).order_by(ApiToken.name)
                                .options(selectinload(ApiToken.connections))))


def describe(row: ApiToken) -> dict:
    """What an operator sees of a token: never the token or its hash."""
    return {"name": row.name, "scope": "admin" if row.admin else [c.name for c in row.connections],
            "read_only": row.read_only, "created_at": row.created_at.isoformat(),
            "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
            "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None}


class Rejected(Exception):
    """The request's token is missing, malformed, unknown or revoked. `name`: the token's name
    when it is known (revoked), for the log."""

    def __init__(self, reason: str, name: str | None = None):
        super().__init__(reason)
        self.name = name


def authenticate(session: Session, header: str | None) -> Principal:
    """The principal of an `Authorization: Bearer TOKEN` header, or Rejected."""
    scheme, _, token = (header or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Rejected("missing" if not header else "malformed")
    if not TOKEN_RE.fullmatch(token):
        raise Rejected("malformed")
    wanted = digest(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == wanted)
                         .options(selectinload(ApiToken.connections)))
    if row is None or not hmac.compare_digest(row.token_hash, wanted):
        raise Rejected("unknown")
    if row.revoked_at is not None:
        raise Rejected("revoked", row.name)
    now = utcnow()
    if row.last_used_at is None or now - row.last_used_at > TOUCH_EVERY:
        row.last_used_at = now
    return Principal(row.name, row.admin, row.read_only, frozenset(c.id for c in row.connections))
