"""`bbsync connection`: create, update and list connections."""
from __future__ import annotations

import json
import os
import tomllib

import click

from worker.cli.base import fail, main


@main.group()
def connection() -> None:
    """Connections: a customer's repositories, secrets, target and tables."""


@connection.command("add")
@click.argument("name")
@click.option("--repo", "repos", multiple=True, required=True, help="WORKSPACE/REPO_SLUG (repeatable).")
@click.option("--webhook-secret", "secrets", multiple=True,
              help="The secret of a hook made by hand (repeatable: give old and new to rotate); "
                   "not needed when bbsync makes the hooks (bbsync hooks register).")
@click.option("--target", default="local", show_default=True)
@click.option("--api-url", default=None, help="Bitbucket API base URL.")
@click.option("--mapping", "mapping_file", type=click.Path(exists=True, dir_okay=False),
              help="TOML file overriding entries of the default mapping tables.")
@click.option("--api-token", default=None, metavar="EMAIL:TOKEN",
              help="Bitbucket API token (Basic auth with the Atlassian account email); "
                   "or set BBSYNC_API_TOKEN to keep it out of the process list.")
@click.option("--policy", "policies", multiple=True, metavar="FIELD=POLICY",
              help="Conflict policy per field: bitbucket_wins, target_wins, latest_wins, manual.")
@click.option("--push-internal-notes/--no-push-internal-notes", default=None,
              help="Also post internal notes to Bitbucket (off unless said).")
def connection_add(name, repos, secrets, target, api_url, mapping_file, api_token, policies,
                   push_internal_notes) -> None:
    """Create or update connection NAME (idempotent)."""
    from worker import connections
    from worker.db.session import transaction

    api_token = api_token or os.environ.get("BBSYNC_API_TOKEN") or None
    parsed_policies = None
    if policies:
        parsed_policies = {}
        for item in policies:
            field, sep, policy = item.partition("=")
            if not sep:
                fail(f"--policy {item!r}: expected FIELD=POLICY")
            parsed_policies[field.strip()] = policy.strip()

    override = None
    if mapping_file:
        try:
            with open(mapping_file, "rb") as fh:
                override = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            fail(f"{mapping_file}: {exc}")
    spec = connections.ConnectionSpec(name=name, repos=tuple(repos), webhook_secrets=tuple(secrets),
                                      target=target, api_url=api_url, mapping_override=override,
                                      policies=parsed_policies, api_token=api_token,
                                      push_internal_notes=push_internal_notes)
    try:
        with transaction() as session:
            _conn, created = connections.upsert(session, spec)
    except connections.InvalidConnection as exc:
        fail(str(exc))
    given = f"{len(set(secrets))} active webhook secret(s)" if secrets else "webhook secrets unchanged"
    click.echo(f"connection {name} {'created' if created else 'updated'}: {len(set(repos))} repo(s), {given}")


@connection.command("list")
@click.option("--json", "as_json", is_flag=True)
def connection_list(as_json: bool) -> None:
    """List connections (secrets are never shown)."""
    from worker import connections
    from worker.db.session import transaction

    with transaction() as session:
        rows = [connections.summary(session, c) for c in connections.list_all(session)]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no connections")
    for r in rows:
        status = "ISSUE TRACKER REMOVED (410) since " + r["tracker_removed_at"] if r["tracker_removed_at"] else "ok"
        budget = f"{r['api_calls_last_hour']}/{r['api_budget_per_hour']} calls this hour" if r["credential"] else "no credential"
        click.echo(f"{r['name']:<16} {status:<10} target={r['target']} secrets={r['webhook_secrets']} "
                   f"{budget}  repos={', '.join(r['repos'])}")


@connection.command("show")
@click.argument("name")
def connection_show(name: str) -> None:
    """Everything about connection NAME but its secrets, as JSON: repositories, target, API URL,
    credential (its kind and non-secret key), budget, policies, and how many webhook secrets and
    API tokens it has."""
    from worker import connections
    from worker.db.session import transaction

    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            fail(f"no connection named {name!r}")
        click.echo(json.dumps(connections.details(session, conn), indent=2))
