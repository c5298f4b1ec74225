"""Authentication: one httpx2.Auth per credential kind. Tokens go in the Authorization
header only: never in a URL, a log line or a repr.

- API token: `Authorization: Basic base64(email:token)`.
- Bearer: `Authorization: Bearer <token>`.
- OAuth 2.0: a bearer access token kept fresh through CredentialStore.refresh_oauth (one
  refresher at a time across processes, rotated refresh token committed before use), with
  authlib's httpx2 OAuth2Client speaking to the token endpoint. Refreshed `leeway` seconds
  before expiry; on a 401 from the API, refreshed once and the request retried once.

Every auth carries `credential_key`, the non-secret key the budget meter counts against.
"""
from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Callable, Generator

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import OAuth2Client

from .credentials import (ApiToken, BearerToken, CredentialStore, OAuthCredential,
                          StoredCredential)
from .errors import AuthFailed, BitbucketError, Unavailable, error_class

log = logging.getLogger("bbsync.bitbucket")

Flow = Generator[httpx2.Request, httpx2.Response, None]

#: Refresh this long before the access token expires (Bitbucket's live one hour).
DEFAULT_LEEWAY = 60.0
TOKEN_TIMEOUT = httpx2.Timeout(10, connect=5)


class ApiTokenAuth(httpx2.Auth):
    def __init__(self, credential: ApiToken) -> None:
        raw = f"{credential.email}:{credential.token}".encode()
        self._header = "Basic " + base64.b64encode(raw).decode("ascii")
        self.credential_key = credential.key

    def __repr__(self) -> str:
        return f"ApiTokenAuth(key={self.credential_key!r})"

    def auth_flow(self, request: httpx2.Request) -> Flow:
        request.headers["Authorization"] = self._header
        yield request


class BearerAuth(httpx2.Auth):
    def __init__(self, credential: BearerToken) -> None:
        self._header = f"Bearer {credential.token}"
        self.credential_key = credential.key

    def __repr__(self) -> str:
        return f"BearerAuth(key={self.credential_key!r})"

    def auth_flow(self, request: httpx2.Request) -> Flow:
        request.headers["Authorization"] = self._header
        yield request


class OAuthAuth(httpx2.Auth):
    """OAuth 2.0 for a stored credential. Synchronous clients only (it does database and
    network I/O while authenticating).

    `token_transport` reaches the token endpoint (tests pass the simulator's WSGI transport).
    """

    requires_request_body = True        # so the request can be sent a second time after a 401

    def __init__(self, store: CredentialStore, credential_id: int, *,
                 token_transport: httpx2.BaseTransport | None = None,
                 timeout: httpx2.Timeout = TOKEN_TIMEOUT, leeway: float = DEFAULT_LEEWAY,
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._id = credential_id
        self._transport = token_transport
        self._timeout = timeout
        self._leeway = leeway
        self._clock = clock
        self._lock = threading.Lock()
        stored = store.load(credential_id)
        if not isinstance(stored.secret, OAuthCredential):
            raise ValueError(f"credential {credential_id} is {stored.kind}, not oauth")
        self._current: OAuthCredential = stored.secret
        self.credential_key = stored.key

    def __repr__(self) -> str:
        return f"OAuthAuth(credential={self._id}, key={self.credential_key!r})"

    def sync_auth_flow(self, request: httpx2.Request) -> Flow:
        request.read()
        token = self._access_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        log.info("bitbucket.oauth_rejected credential=%s method=%s path=%s", self._id,
                 request.method, request.url.path)
        token = self._access_token(rejected=token)
        request.headers["Authorization"] = f"Bearer {token}"
        yield request       # once: a second 401 is the caller's AuthFailed

    async def async_auth_flow(self, request: httpx2.Request):
        raise RuntimeError("OAuthAuth works with synchronous clients only")
        yield request

    def _access_token(self, rejected: str | None = None) -> str:
        with self._lock:
            current = self._current
            if rejected is None and not current.stale(self._clock(), self._leeway):
                return current.access_token      # type: ignore[return-value]
            if rejected is not None and current.access_token != rejected:
                # another thread of this process has refreshed it already
                return current.access_token      # type: ignore[return-value]
            self._current = self._store.refresh_oauth(
                self._id, self._fetch, leeway=self._leeway, rejected_access_token=rejected)
            return self._current.access_token    # type: ignore[return-value]

    def _fetch(self, current: OAuthCredential) -> OAuthCredential:
        """Ask the token endpoint for new tokens (called with the row lock held)."""
        grant = "refresh_token" if current.refresh_token else "client_credentials"
        log.debug("bitbucket.oauth_token_request credential=%s grant=%s", self._id, grant)
        try:
            with OAuth2Client(client_id=current.client_id, client_secret=current.client_secret,
                              token_endpoint_auth_method="client_secret_basic",
                              transport=self._transport, timeout=self._timeout) as oauth:
                if current.refresh_token:
                    response = oauth.refresh_token(current.token_url,
                                                   refresh_token=current.refresh_token)
                else:
                    response = oauth.fetch_token(current.token_url, grant_type="client_credentials")
            return current.with_token(response, self._clock())
        except OAuthError as exc:
            # invalid_grant: the refresh token was spent or revoked; a person must re-authorize.
            raise AuthFailed(f"the OAuth token endpoint refused the {grant} grant: {exc.error}",
                             method="POST", path=_path(current.token_url)) from None
        except httpx2.HTTPStatusError as exc:
            status = exc.response.status_code
            raise error_class(status)("the OAuth token endpoint failed", status=status,
                                      method="POST", path=_path(current.token_url)) from None
        except httpx2.TransportError as exc:
            raise Unavailable(f"the OAuth token endpoint is unreachable ({type(exc).__name__})",
                              method="POST", path=_path(current.token_url)) from None
        except ValueError as exc:
            raise BitbucketError(f"the OAuth token endpoint answered nonsense: {exc}",
                                 method="POST", path=_path(current.token_url)) from None


def _path(url: str) -> str:
    return httpx2.URL(url).path


def auth_for(stored: StoredCredential, store: CredentialStore | None = None, *,
             token_transport: httpx2.BaseTransport | None = None,
             clock: Callable[[], float] = time.time) -> httpx2.Auth:
    """The auth for a stored credential (OAuth needs the store, to refresh through it)."""
    secret = stored.secret
    if isinstance(secret, ApiToken):
        return ApiTokenAuth(secret)
    if isinstance(secret, BearerToken):
        return BearerAuth(secret)
    if store is None:
        raise ValueError("an OAuth credential needs the CredentialStore to refresh through")
    return OAuthAuth(store, stored.id, token_transport=token_transport, clock=clock)
