"""Bitbucket's OAuth 2.0 token endpoint: POST /site/oauth2/access_token.

Grants: client_credentials, authorization_code (a code from the authorize page, authorize.py:
single use, for its client, redirect_uri and PKCE verifier) and refresh_token. A registered
consumer must present its secret; any other client id is accepted as it comes.
Access tokens expire after `state.token_ttl` seconds; refresh tokens rotate: each refresh
returns a new one and the old one is invalid from then on (reusing it is `invalid_grant`),
which is why a client must persist the new token at once and never refresh concurrently.
"""
from __future__ import annotations

import base64
import binascii
import secrets
import threading
import time
from dataclasses import dataclass

from flask import Blueprint, current_app, jsonify, request

ACCESS_PREFIX = "bbsim_at_"    # lets the API tell our own tokens from foreign bearer tokens
REFRESH_PREFIX = "bbsim_rt_"
SCOPES = "issue issue:write webhook repository"

bp = Blueprint("oauth", __name__)


class OAuthError(Exception):
    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description


@dataclass
class AccessToken:
    client_id: str
    expires_at: float          # time.monotonic() deadline


class TokenStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._access: dict[str, AccessToken] = {}
        self._refresh: dict[str, str] = {}       # refresh token -> client id
        self.refresh_count = 0                   # successful refreshes, for tests

    def issue(self, client_id: str, ttl: float) -> dict:
        access = ACCESS_PREFIX + secrets.token_urlsafe(24)
        refresh = REFRESH_PREFIX + secrets.token_urlsafe(24)
        with self._lock:
            self._access[access] = AccessToken(client_id, time.monotonic() + ttl)
            self._refresh[refresh] = client_id
        return {"access_token": access, "token_type": "bearer", "expires_in": int(ttl),
                "refresh_token": refresh, "scopes": SCOPES}

    def refresh(self, client_id: str, refresh_token: str, ttl: float) -> dict:
        with self._lock:
            owner = self._refresh.get(refresh_token)
            if owner is None or owner != client_id:
                raise OAuthError(400, "invalid_grant", "Invalid refresh_token")
            del self._refresh[refresh_token]     # rotation: the old token is spent
            self.refresh_count += 1
        return self.issue(client_id, ttl)

    def client_for(self, token: str) -> tuple[str | None, bool]:
        """(client id, expired) for one of our access tokens; (None, True) if unknown."""
        with self._lock:
            found = self._access.get(token)
        if found is None:
            return None, True
        return found.client_id, time.monotonic() >= found.expires_at

    def expire_all(self) -> None:
        with self._lock:
            for token in self._access.values():
                token.expires_at = 0.0

    def clear(self) -> None:
        with self._lock:
            self._access.clear()
            self._refresh.clear()
            self.refresh_count = 0


def _client_credentials() -> tuple[str, str]:
    """Client id and secret from Basic auth (as Bitbucket documents) or the form fields."""
    header = request.headers.get("Authorization", "")
    if header.lower().startswith("basic "):
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError(401, "invalid_client", "Malformed Basic credentials") from None
        client_id, _, client_secret = decoded.partition(":")
    else:
        client_id = request.form.get("client_id", "")
        client_secret = request.form.get("client_secret", "")
    if not client_id or not client_secret:
        raise OAuthError(401, "invalid_client", "Client credentials missing")
    return client_id, client_secret


@bp.post("/site/oauth2/access_token")
def access_token():
    state = current_app.extensions["bbsim"]
    try:
        client_id, secret = _client_credentials()
        state.consumers.check_secret(client_id, secret)
        grant = request.form.get("grant_type", "")
        if grant == "client_credentials":
            return jsonify(state.tokens.issue(client_id, state.token_ttl))
        if grant == "authorization_code":
            code = request.form.get("code")
            if not code:
                raise OAuthError(400, "invalid_request", "Missing code")
            state.consumers.redeem(code, client_id, request.form.get("redirect_uri"),
                                   request.form.get("code_verifier"))
            return jsonify(state.tokens.issue(client_id, state.token_ttl))
        if grant == "refresh_token":
            token = request.form.get("refresh_token", "")
            if not token:
                raise OAuthError(400, "invalid_request", "Missing refresh_token")
            return jsonify(state.tokens.refresh(client_id, token, state.token_ttl))
        raise OAuthError(400, "unsupported_grant_type", f"Unsupported grant type: {grant!r}")
    except OAuthError as exc:
        return jsonify({"error": exc.error, "error_description": exc.description}), exc.status
