"""Connecting a Bitbucket account with OAuth 2.0's authorization code grant (RFC 6749 4.1, with
PKCE, RFC 7636), in three steps:

- begin (`bbsync connection oauth`): store the consumer for a connection (its secret encrypted)
  and return a one-time link to the web app, valid for LINK_TTL;
- start (the link is opened): spend the link, make a `state` and a PKCE verifier, and return
  Bitbucket's authorize URL to redirect to;
- complete (Bitbucket sends the person back to the callback): spend the state, exchange the
  code at the token endpoint, and store the tokens as the connection's `oauth` credential
  (worker.bitbucket.auth.OAuthAuth refreshes them from then on).

The link id and the state are 256 random bits each, stored only as their SHA-256 and usable
once; both expire with the link. A step that cannot go on raises Refused (the web answers 400)
or, for a failed exchange, ExchangeFailed (502); neither changes the connection's credential,
and a state once presented stays spent. Messages are fixed sentences: nothing the caller sent,
and no code, state, token or secret, is ever put in one or logged.
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Callable
from urllib.parse import urlencode

import httpx2
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session, sessionmaker

from config import outbound
from worker import crypto
from worker.db.models import Connection, utcnow
from worker.db.oauth import OAuthAuthorization

from .credentials import OAuthCredential, oauth_credential, store_for_connection
from .urls import oauth_urls

log = logging.getLogger("bbsync.bitbucket")

LINK_TTL = timedelta(minutes=10)
START_PATH = "/oauth/bitbucket/start/"
CALLBACK_PATH = "/oauth/bitbucket/callback"
EXCHANGE_TIMEOUT = httpx2.Timeout(10, connect=5)
#: Rows this long past their expiry are deleted when a new link is made.
KEEP_EXPIRED = timedelta(days=1)
_RANDOM_ID = re.compile(r"[A-Za-z0-9_-]{43}")      # 32 bytes, urlsafe base64 without padding
_CODE = re.compile(r"[\x21-\x7e]{1,512}")           # RFC 6749's VSCHAR, bounded
#: Errors Bitbucket may send back instead of a code (RFC 6749 4.1.2.1); others read as "error".
_KNOWN_ERRORS = ("access_denied", "invalid_request", "unauthorized_client", "invalid_scope",
                 "unsupported_response_type", "server_error", "temporarily_unavailable")


class AuthorizeError(ValueError):
    """A link cannot be made as asked (begin); the message says why, never a secret."""


class Refused(Exception):
    """The link or the callback is not acceptable: unknown, expired, used, or refused at
    Bitbucket. `reason` is a stable word for the log; the message is shown to the person."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ExchangeFailed(Exception):
    """The token endpoint did not give tokens for the code (an error status, nonsense, or no
    answer); the message names the status or the failure, never the body."""


@dataclass(frozen=True)
class Connected:
    connection: str
    credential_key: str


def digest(value: str) -> str:
    return hashlib.sha256(value.encode("ascii")).hexdigest()


def s256(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636 4.2)."""
    raw = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _seal(**parts: str) -> bytes:
    return crypto.encrypt(json.dumps(parts, sort_keys=True))


def _unseal(ciphertext: bytes) -> dict[str, str]:
    return json.loads(crypto.decrypt(ciphertext))


def begin(session: Session, connection: str, client_id: str, client_secret: str, public_url: str,
          *, now: datetime | None = None, resolve: outbound.Resolver | None = None) -> str:
    """Store the consumer for `connection` and return the one-time link (in this transaction)."""
    try:
        base = outbound.check(public_url, "--public-url", **({"resolve": resolve} if resolve else {}))
    except outbound.UnsafeUrl as exc:
        raise AuthorizeError(str(exc)) from None
    try:
        oauth_credential(client_id, client_secret)
    except ValueError as exc:
        raise AuthorizeError(str(exc)) from None
    conn = (session.scalar(select(Connection).where(Connection.name == connection))
            if connection.isprintable() and len(connection) <= 64 else None)
    if conn is None:
        raise AuthorizeError(f"no connection named {connection!r}")
    now = now or utcnow()
    session.execute(delete(OAuthAuthorization).where(OAuthAuthorization.expires_at < now - KEEP_EXPIRED))
    link_id = secrets.token_urlsafe(32)
    session.add(OAuthAuthorization(
        connection_id=conn.id, link_hash=digest(link_id), client_id=client_id,
        secret=_seal(client_secret=client_secret), redirect_uri=base + CALLBACK_PATH,
        created_at=now, expires_at=now + LINK_TTL))
    session.flush()
    log.info("bitbucket.oauth_link_made connection=%s client_id=%s", conn.name, client_id)
    return f"{base}{START_PATH}{link_id}"


_AGAIN = " Make a new link with `bbsync connection oauth`."
_MESSAGES = {
    "unknown_link": "This link is not valid." + _AGAIN,
    "expired_link": "This link has expired." + _AGAIN,
    "used_link": "This link was used already." + _AGAIN,
    "unknown_state": "This answer from Bitbucket belongs to no authorization under way." + _AGAIN,
    "expired_state": "This authorization has expired." + _AGAIN,
    "used_state": "This authorization was completed already." + _AGAIN,
}


def _take(session: Session, what: str, value: str | None, now: datetime) -> OAuthAuthorization:
    """The authorization whose link (`what="link"`) or state (`"state"`) is `value`, marked
    used at `now` (opened_at, used_at); Refused if it is unknown, expired or used already."""
    hashed, spent_at = {"link": (OAuthAuthorization.link_hash, OAuthAuthorization.opened_at),
                        "state": (OAuthAuthorization.state_hash, OAuthAuthorization.used_at)}[what]
    row = (session.scalar(select(OAuthAuthorization).where(hashed == digest(value)))
           if value and _RANDOM_ID.fullmatch(value) else None)
    problem = "unknown" if row is None else "expired" if row.expires_at <= now else None
    if problem is None:
        # One UPDATE that checks and spends: two requests racing for one row cannot both win.
        taken = session.execute(update(OAuthAuthorization)
                                .where(OAuthAuthorization.id == row.id, spent_at.is_(None))
                                .values({spent_at: now}).execution_options(synchronize_session=False))
        problem = None if taken.rowcount == 1 else "used"
    if problem is not None:
        raise Refused(f"{problem}_{what}", _MESSAGES[f"{problem}_{what}"])
    return row


def start(session: Session, link_id: str, *, now: datetime | None = None) -> str:
    """Spend the link and return Bitbucket's authorize URL (in this transaction)."""
    row = _take(session, "link", link_id, now or utcnow())
    state, verifier = secrets.token_urlsafe(32), secrets.token_urlsafe(64)
    row.state_hash = digest(state)
    row.secret = _seal(client_secret=_unseal(row.secret)["client_secret"], code_verifier=verifier)
    conn = session.get(Connection, row.connection_id)
    authorize_url, _token_url = oauth_urls(conn.api_url)
    log.info("bitbucket.oauth_link_opened connection=%s", conn.name)
    return authorize_url + "?" + urlencode({
        "client_id": row.client_id, "response_type": "code", "state": state,
        "redirect_uri": row.redirect_uri, "code_challenge": s256(verifier),
        "code_challenge_method": "S256"})


@dataclass(frozen=True)
class _Spent:
    connection_id: int
    client_id: str
    client_secret: str
    verifier: str
    redirect_uri: str


def _spend_state(session: Session, state: str | None, now: datetime) -> _Spent:
    row = _take(session, "state", state, now)
    parts = _unseal(row.secret)
    row.secret = b""            # the consumer's secret and the verifier have no further use here
    return _Spent(row.connection_id, row.client_id, parts["client_secret"], parts["code_verifier"],
                  row.redirect_uri)


def complete(sessions: sessionmaker[Session], state: str | None, code: str | None,
             error: str | None = None, *, transport: httpx2.BaseTransport | None = None,
             now: datetime | None = None, clock: Callable[[], float] = time.time) -> Connected:
    """The callback: spend the state (committed before anything else, so it stays spent),
    exchange the code, store the tokens. Refused or ExchangeFailed change no credential."""
    now = now or utcnow()
    if error is None and not _CODE.fullmatch(code or ""):
        raise Refused("missing_code", "Bitbucket's answer has no authorization code.")
    with sessions.begin() as session:
        spent = _spend_state(session, state, now)
        name, api_url = session.execute(select(Connection.name, Connection.api_url)
                                        .where(Connection.id == spent.connection_id)).one()
    if error is not None:
        word = error if error in _KNOWN_ERRORS else "error"
        log.warning("bitbucket.oauth_refused connection=%s reason=%s", name, word)
        raise Refused(word, "Bitbucket did not authorize bbsync"
                      + (" (access was denied)." if word == "access_denied" else f" ({word})."))
    assert code is not None                 # (checked above)
    _authorize_url, token_url = oauth_urls(api_url)
    answer = exchange(token_url, spent, code, transport=transport)
    secret = _credential(spent, token_url, answer, clock())
    with sessions.begin() as session:
        conn = session.get(Connection, spent.connection_id, with_for_update=True)
        if conn is None:        # deleted while the person was at Bitbucket
            raise Refused("unknown_connection", "The connection no longer exists.")
        store_for_connection(session, conn, secret)
        conn.updated_at = utcnow()          # a new revision: workers re-read the connection
    log.info("bitbucket.oauth_connected connection=%s key=%s", conn.name, secret.key)
    return Connected(conn.name, secret.key)


def _credential(spent: _Spent, token_url: str, answer: dict[str, Any], now: float) -> OAuthCredential:
    """The consumer with the tokens of `answer`, each checked as a stored token is."""
    try:
        got = OAuthCredential(spent.client_id, spent.client_secret, token_url).with_token(answer, now)
        return oauth_credential(got.client_id, got.client_secret, token_url=token_url,
                                access_token=got.access_token, refresh_token=got.refresh_token,
                                expires_at=got.expires_at)
    except (TypeError, ValueError, KeyError):
        raise ExchangeFailed("the token endpoint answered without usable tokens") from None


def exchange(token_url: str, spent: _Spent, code: str, *,
             transport: httpx2.BaseTransport | None = None) -> dict[str, Any]:
    """POST the authorization_code grant, the consumer as Basic auth (as Bitbucket documents),
    with the PKCE verifier and the redirect_uri sent to the authorize page."""
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": spent.redirect_uri,
            "code_verifier": spent.verifier}
    try:
        with httpx2.Client(transport=transport, timeout=EXCHANGE_TIMEOUT) as http:
            response = http.post(token_url, data=form, auth=(spent.client_id, spent.client_secret),
                                 headers={"Accept": "application/json"})
    except httpx2.TransportError as exc:
        raise ExchangeFailed(f"the token endpoint did not answer ({type(exc).__name__})") from None
    if response.status_code != 200:
        raise ExchangeFailed(f"the token endpoint answered {response.status_code}"
                             + _error_word(response))
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ExchangeFailed("the token endpoint answered something other than a JSON object")
    return body


def _error_word(response: httpx2.Response) -> str:
    """` (invalid_grant)`: the OAuth error code of a refusal, if it is a plain word."""
    try:
        word = response.json().get("error")
    except (ValueError, AttributeError):
        return ""
    return f" ({word})" if isinstance(word, str) and re.fullmatch(r"[a-z_]{1,40}", word) else ""
