"""A Bitbucket client per connection, built from its stored credential. One per process and
connection (one httpx client, one connection pool), rebuilt when the credential changes."""
from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, Callable

from worker.bitbucket.auth import auth_for
from worker.bitbucket.budget import BudgetMeter
from worker.bitbucket.client import BitbucketClient
from worker.bitbucket.credentials import CredentialStore
from worker.bitbucket.errors import AuthFailed
from worker.db.credentials import Credential
from worker.db.models import Connection
from worker.db.session import session_factory, transaction

#: How reconciliation and backfill get a connection's client (client_for; a test hands in its own).
ClientFactory = Callable[[int], Any]

_clients: dict[tuple, BitbucketClient] = {}
_lock = threading.Lock()


def client_for(connection_id: int) -> BitbucketClient:
    with transaction() as session:
        conn = session.get(Connection, connection_id)
        credential = session.get(Credential, conn.credential_id) if conn.credential_id else None
        if credential is None:
            raise AuthFailed(f"connection {conn.name} has no Bitbucket credential: "
                             f"bbsync connection add {conn.name} ... --api-token EMAIL:TOKEN")
        # Rebuild when the credential is replaced, not when an OAuth refresh rewrites the row
        # (the OAuth auth re-reads its tokens through the store by itself).
        version = None if credential.kind == "oauth" else hashlib.sha256(credential.secret).hexdigest()
        key = (os.getpid(), connection_id, conn.api_url, credential.id, credential.kind, version)
    with _lock:
        client = _clients.get(key)
        if client is None:
            for old in [k for k in _clients if k[:2] == key[:2]]:
                _clients.pop(old).close()
            sessions = session_factory()
            store = CredentialStore(sessions)
            stored = store.load(key[3])
            client = _clients[key] = BitbucketClient(
                key[2], auth_for(stored, store), budget=BudgetMeter(sessions), credential_key=stored.key)
        return client
