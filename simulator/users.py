"""User operations of SimulatorState: accounts, and the principal behind each credential.

Names are turned into stable UUIDs and account ids, so the same credential is the same user in
every run (and in every test).
"""
from __future__ import annotations

import hashlib
import uuid

from . import payloads
from .models import ApiError, User
from .oauth import ACCESS_PREFIX

_NAMESPACE = uuid.UUID("6f1b7a4e-3c55-4b8e-9a0e-2d7c1f0b5e11")


def stable_uuid(kind: str, name: str) -> str:
    return "{" + str(uuid.uuid5(_NAMESPACE, f"{kind}:{name}")) + "}"


def derived_account_id(kind: str, name: str) -> str:
    # Shaped like a modern Atlassian account id ("712020:" + a UUID).
    return "712020:" + str(uuid.uuid5(_NAMESPACE, f"account:{kind}:{name}"))


class UserOperations:
    """Mixed into SimulatorState: `self.lock`, `self._users`, `self.tokens`, `self.public_url`."""


    def ensure_user(self, display_name: str, nickname: str | None = None,
                    user_uuid: str | None = None, account_id: str | None = None) -> dict:
        """Add (or find) a user, e.g. a human to assign issues to; returns its payload."""
        with self.lock:
            return payloads.user(self._user(display_name, nickname, user_uuid, account_id),
                                 self.public_url)

    def _user(self, display_name: str, nickname: str | None = None, uuid_: str | None = None,
              account_id: str | None = None) -> User:
        key = uuid_ or stable_uuid("user", display_name)
        key = key if key.startswith("{") else "{" + key + "}"
        found = self._users.get(key)
        if found is None:
            found = User(uuid=key, display_name=display_name,
                         nickname=nickname or display_name.split("@")[0],
                         account_id=account_id or derived_account_id("user", key))
            self._users[key] = found
        return found

    def principal_for_basic(self, username: str) -> User:
        """The user behind Basic credentials (an Atlassian account email and an API token)."""
        with self.lock:
            return self._user(username, uuid_=stable_uuid("basic", username),
                              account_id=derived_account_id("basic", username))

    def principal_for_bearer(self, token: str) -> User:
        """The user behind a bearer token; raises 401 for our own expired or unknown tokens."""
        if token.startswith(ACCESS_PREFIX):
            client_id, expired = self.tokens.client_for(token)
            if client_id is None:
                raise ApiError(401, "Access token is invalid.")
            if expired:
                raise ApiError(401, "Access token expired. Use your refresh token to obtain "
                                    "a new access token.")
            name = f"OAuth consumer {client_id}"
            kind = "consumer:" + client_id
        else:
            # A token the simulator did not issue (an API or access token set up by hand):
            # accepted, as a user of its own.
            digest = hashlib.sha256(token.encode()).hexdigest()[:12]
            name, kind = f"Token user {digest}", "token:" + digest
        with self.lock:
            return self._user(name, nickname=name.replace(" ", "-").lower(),
                              uuid_=stable_uuid("bearer", kind),
                              account_id=derived_account_id("bearer", kind))

    def user_payload(self, user: User) -> dict:
        with self.lock:
            return payloads.user(user, self.public_url)

    def find_user(self, reference: str) -> dict:
        """GET /2.0/users/{uuid or account_id}."""
        with self.lock:
            return payloads.user(self._find_user({"uuid": reference, "account_id": reference},
                                                 create=False), self.public_url)

    def _find_user(self, spec: dict, create: bool = True) -> User:
        """A user referenced by uuid, account_id or username/nickname; created if unknown."""
        wanted_uuid = spec.get("uuid")
        if wanted_uuid:
            braced = wanted_uuid if wanted_uuid.startswith("{") else "{" + wanted_uuid + "}"
            if braced in self._users:
                return self._users[braced]
        for user in self._users.values():
            if spec.get("account_id") and user.account_id == spec["account_id"]:
                return user
            name = spec.get("username") or spec.get("nickname")
            if name and user.nickname == name:
                return user
        if not create:
            raise ApiError(404, "User not found.")
        if wanted_uuid:
            return self._user(f"User {wanted_uuid.strip('{}')[:8]}", uuid_=wanted_uuid)
        if spec.get("account_id"):
            account = spec["account_id"]
            return self._user(f"User {account[-8:]}", uuid_=stable_uuid("account", account),
                              account_id=account)
        name = spec.get("username") or spec.get("nickname")
        return self._user(name, nickname=name, uuid_=stable_uuid("nickname", name))
