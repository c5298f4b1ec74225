"""`bbsync connection oauth`: connect a connection to Bitbucket with OAuth 2.0's authorization
code grant (worker.bitbucket.authorize)."""
from __future__ import annotations

import os

import click

from worker.cli.base import fail
from worker.cli.connections import connection


@connection.command("oauth")
@click.argument("name")
@click.option("--client-id", required=True, help="The OAuth consumer's key.")
@click.option("--client-secret", default=None,
              help="The consumer's secret; or set BBSYNC_OAUTH_CLIENT_SECRET to keep it out of the "
                   "process list.")
@click.option("--public-url", required=True, metavar="URL",
              help="Where people and Bitbucket reach this web app (https); the consumer's callback "
                   "URL must be URL/oauth/bitbucket/callback.")
def connection_oauth(name, client_id, client_secret, public_url) -> None:
    """Store OAuth consumer CLIENT-ID for connection NAME (its secret encrypted) and print a
    one-time link, alone on the last line: whoever opens it within 10 minutes authorizes bbsync
    at Bitbucket, and the connection then uses that account's tokens."""
    from worker.bitbucket import authorize
    from worker.db.session import transaction

    client_secret = client_secret or os.environ.get("BBSYNC_OAUTH_CLIENT_SECRET") or None
    if client_secret is None:
        fail("the consumer's secret is required: --client-secret or BBSYNC_OAUTH_CLIENT_SECRET")
    try:
        with transaction() as session:
            link = authorize.begin(session, name, client_id, client_secret, public_url)
    except authorize.AuthorizeError as exc:
        fail(str(exc))
    minutes = int(authorize.LINK_TTL.total_seconds() // 60)
    click.echo(f"consumer {client_id} stored for connection {name}. Open this link within "
               f"{minutes} minutes, once, to authorize bbsync at Bitbucket:")
    click.echo(link)
