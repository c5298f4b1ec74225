"""The one home for every Bitbucket call.

- errors.py       typed errors (never raw status codes upward) and the RETRYABLE tuple
- urls.py         every URL template, in one place
- credentials.py  the `credentials` table, secret parsing, and the OAuth refresh protocol
- auth.py         an httpx2.Auth per credential kind (Basic API token, bearer, OAuth 2.0)
- budget.py       the `api_budget` table: a per-credential meter over a rolling hour
- retry.py        backoff with full jitter and Retry-After parsing
- client.py       BitbucketClient: one httpx2.Client, retries, pagination, the methods
"""
# The tables here (credentials, api_budget) live on worker.db.models.Base, and that module
# may import them back (one metadata for the whole schema, for Alembic). Loading it first,
# here, makes that cycle safe whichever module is imported first.
import worker.db.models  # noqa: F401,E402
