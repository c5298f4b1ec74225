"""Bitbucket's OAuth 2.0 authorization page: GET /site/oauth2/authorize, and the consumers and
authorization codes behind it.

A consumer is registered with its key (client id), secret and callback URL, as on Bitbucket's
"Add consumer" page (`state.consumers.add(...)`, or `POST /_sim/consumers`). The page grants at
once, as a user who is logged in and consents would: 302 to the consumer's callback URL with a
`code` and the request's `state`. A `redirect_uri`, if given, must be the callback URL. With
`state.consumers.consent = "deny"` (`POST /_sim/settings {"oauth_consent": "deny"}`) the user
refuses instead: `error=access_denied`.

A code is single use, expires after `code_ttl` seconds, and is bound to its client, to the
redirect_uri sent with it, and to its PKCE challenge (RFC 7636, `S256` or `plain`): the token
endpoint (oauth.py) redeems it only with the same client, the same redirect_uri and the verifier
that matches; anything else is `invalid_grant`, as Bitbucket answers.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import html
import re
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

from flask import Blueprint, Response, current_app, redirect, request

from .oauth import OAuthError

CODE_TTL = 300.0
CONSENTS = ("grant", "deny")
_VERIFIER = re.compile(r"[A-Za-z0-9._~-]{43,128}")
_CHALLENGE = re.compile(r"[A-Za-z0-9._~-]{43,128}")

bp = Blueprint("authorize", __name__)


@dataclass(frozen=True)
class Consumer:
    client_id: str
    client_secret: str
    callback_url: str


@dataclass(frozen=True)
class _Code:
    client_id: str
    redirect_uri: str | None        # as sent to the authorize page (None: not sent)
    challenge: str | None
    method: str
    expires_at: float               # time.monotonic() deadline


def s256(verifier: str) -> str:
    """The S256 code challenge of a PKCE verifier (RFC 7636 4.2)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class Consumers:
    """Registered OAuth consumers and the authorization codes issued to them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._consumers: dict[str, Consumer] = {}
        self._codes: dict[str, _Code] = {}
        self.code_ttl = CODE_TTL
        self.consent = "grant"

    def add(self, client_id: str, client_secret: str, callback_url: str) -> Consumer:
        parts = urlsplit(callback_url)
        if not client_id or not client_secret or parts.scheme not in ("http", "https") \
                or not parts.netloc or parts.fragment:
            raise ValueError("a consumer needs a key, a secret and an http(s) callback URL")
        consumer = Consumer(client_id, client_secret, callback_url)
        with self._lock:
            self._consumers[client_id] = consumer
        return consumer

    def get(self, client_id: str) -> Consumer | None:
        with self._lock:
            return self._consumers.get(client_id)

    def check_secret(self, client_id: str, client_secret: str) -> None:
        """A registered consumer must present its secret; an unregistered client id is let
        through (the simulator's client_credentials grant accepts any consumer)."""
        consumer = self.get(client_id)
        if consumer is not None and not hmac.compare_digest(
                consumer.client_secret.encode(), client_secret.encode()):
            raise OAuthError(401, "invalid_client", "Invalid client secret")

    def grant(self, client_id: str, redirect_uri: str | None, challenge: str | None,
              method: str) -> str:
        code = secrets.token_urlsafe(18)
        with self._lock:
            self._codes[code] = _Code(client_id, redirect_uri, challenge, method,
                                      time.monotonic() + self.code_ttl)
        return code

    def redeem(self, code: str, client_id: str, redirect_uri: str | None,
               verifier: str | None) -> None:
        """Spend `code` (whatever the outcome: a code is tried once), or OAuthError."""
        with self._lock:
            found = self._codes.pop(code, None)
        if found is None or found.client_id != client_id:
            raise OAuthError(400, "invalid_grant", "Invalid authorization code")
        if time.monotonic() >= found.expires_at:
            raise OAuthError(400, "invalid_grant", "Authorization code expired")
        if found.redirect_uri is not None and redirect_uri != found.redirect_uri:
            raise OAuthError(400, "invalid_grant", "redirect_uri does not match")
        if found.challenge is not None:
            if not verifier or not _VERIFIER.fullmatch(verifier):
                raise OAuthError(400, "invalid_grant", "Missing or malformed code_verifier")
            expected = s256(verifier) if found.method == "S256" else verifier
            if not hmac.compare_digest(expected, found.challenge):
                raise OAuthError(400, "invalid_grant", "code_verifier does not match")

    def clear(self) -> None:
        with self._lock:
            self._consumers.clear()
            self._codes.clear()
            self.code_ttl = CODE_TTL
            self.consent = "grant"


def _page(status: int, message: str) -> Response:
    """What Bitbucket shows when it cannot send the user back: an error page, no redirect."""
    body = f"<!doctype html><title>Bitbucket</title><p>{html.escape(message)}</p>"
    return Response(body, status=status, mimetype="text/html")


def _back(to: str, **params: str | None) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    return redirect(f"{to}{'&' if '?' in to else '?'}{query}", code=302)


@bp.get("/site/oauth2/authorize")
def authorize():
    consumers: Consumers = current_app.extensions["bbsim"].consumers
    args = request.args
    consumer = consumers.get(args.get("client_id", ""))
    if consumer is None:
        return _page(400, "Invalid client_id: no OAuth consumer has this key.")
    redirect_uri = args.get("redirect_uri")
    if redirect_uri is not None and redirect_uri != consumer.callback_url:
        return _page(400, "The redirect_uri does not match the consumer's callback URL.")
    back, state = consumer.callback_url, args.get("state")
    if args.get("response_type") != "code":
        return _back(back, error="unsupported_response_type",
                     error_description="response_type must be code", state=state)
    challenge, method = args.get("code_challenge"), args.get("code_challenge_method", "plain")
    if challenge is not None and (method not in ("S256", "plain") or not _CHALLENGE.fullmatch(challenge)):
        return _back(back, error="invalid_request",
                     error_description="Invalid code_challenge or code_challenge_method", state=state)
    if consumers.consent == "deny":
        return _back(back, error="access_denied",
                     error_description="The user denied access to this consumer.", state=state)
    code = consumers.grant(consumer.client_id, redirect_uri, challenge, method)
    return _back(back, code=code, state=state)
