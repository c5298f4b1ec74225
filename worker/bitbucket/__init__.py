"""The one home for every Bitbucket call.

- errors.py       typed errors (never raw status codes upward) and the RETRYABLE tuple
- urls.py         every URL template, in one place
- credentials.py  secret kinds and parsing, the credential store, the OAuth refresh protocol
- auth.py         an httpx2.Auth per credential kind (Basic API token, bearer, OAuth 2.0)
- budget.py       a per-credential request meter over a rolling hour
- retry.py        backoff with full jitter and Retry-After parsing
- client.py       BitbucketClient: one httpx2.Client, retries, pagination, the methods
- scan.py         keyset paging over an issue listing (reconciliation and backfill read with it)

Their tables (credentials, api_budget) live in worker.db.credentials.
"""
