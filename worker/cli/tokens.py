"""`bbsync token`: the bearer tokens of the HTTP API (worker.tokens)."""
from __future__ import annotations

import click

from worker.cli.base import fail, main


@main.group()
def token() -> None:
    """API tokens: made once (shown once), listed, revoked."""


@token.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Sees and changes everything, every connection.")
@click.option("--connection", "connection_names", multiple=True, metavar="CONN",
              help="Sees only this connection's data (repeatable).")
@click.option("--read-only", is_flag=True, help="May read, never write (403 on every write).")
def token_create(name, admin, connection_names, read_only) -> None:
    """Make token NAME and print it, alone on the last line: it is shown this once (only its
    hash is stored)."""
    from worker import tokens
    from worker.db.session import transaction
    try:
        with transaction() as session:
            secret = tokens.create(session, name, admin=admin, connection_names=tuple(connection_names),
                                   read_only=read_only)
    except tokens.TokenError as exc:
        fail(str(exc))
    scope = "admin" if admin else "connections " + ", ".join(dict.fromkeys(connection_names))
    click.echo(f"token {name!r} created ({scope}{', read-only' if read_only else ''}); it is not shown again:")
    click.echo(secret)


@token.command("list")
def token_list() -> None:
    """Tokens: name, scope, created, last used, revoked (never the token)."""
    from worker import tokens
    from worker.db.session import transaction
    with transaction() as session:
        rows = [tokens.describe(row) for row in tokens.list_all(session)]
    if not rows:
        click.echo("no tokens (make one: bbsync token create NAME --admin)")
    for r in rows:
        scope = r["scope"] if r["scope"] == "admin" else ",".join(r["scope"])
        click.echo(f"{r['name']}  scope={scope}{'  read-only' if r['read_only'] else ''}  "
                   f"created={r['created_at']}  last_used={r['last_used_at'] or '-'}"
                   + (f"  REVOKED {r['revoked_at']}" if r["revoked_at"] else ""))


@token.command("revoke")
@click.argument("name")
def token_revoke(name) -> None:
    """Revoke token NAME: refused from the next request on, in every web process."""
    from worker import tokens
    from worker.db.session import transaction
    try:
        with transaction() as session:
            tokens.revoke(session, name)
    except tokens.TokenError as exc:
        fail(str(exc))
    click.echo(f"token {name!r} revoked")
