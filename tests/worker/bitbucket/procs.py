"""Code run in child processes (spawned: a fresh interpreter imports this module by name)."""
from __future__ import annotations

import io
import logging


def call_with_shared_credential(db_url: str, api_url: str, credential_id: int, barrier,
                                results) -> None:
    """Build a client on the shared credential, wait for the others, make one call; report
    (outcome, detail, everything logged) on `results`."""
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        from sqlalchemy.orm import sessionmaker

        from worker.bitbucket.auth import OAuthAuth
        from worker.bitbucket.client import BitbucketClient
        from worker.bitbucket.credentials import CredentialStore
        from worker.db.session import make_engine

        engine = make_engine(db_url)
        store = CredentialStore(sessionmaker(bind=engine, expire_on_commit=False))
        with BitbucketClient(api_url, OAuthAuth(store, credential_id)) as client:
            barrier.wait(timeout=60)
            issue = client.get_issue("acme/widgets", 1)
        engine.dispose()
        results.put(("ok", issue["id"], buffer.getvalue()))
    except BaseException as exc:        # reported to the parent, which fails the test
        results.put(("error", f"{type(exc).__name__}: {exc}", buffer.getvalue()))
