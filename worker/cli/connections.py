"""`bbsync connection`: create, update and list connections."""
from __future__ import annotations

import json
import os
import tomllib
from datetime import timedelta

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
        status = ("ISSUE TRACKER REMOVED (410) since " + r["tracker_removed_at"] if r["tracker_removed_at"]
                  else "PAUSED since " + r["paused_at"] if r["paused_at"] else "ok")
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


@connection.command("pause")
@click.argument("name")
def connection_pause(name: str) -> None:
    """Stop processing and pushing for NAME: its deliveries are still verified, stored and
    acknowledged, and wait."""
    from worker import connections
    from worker.db.session import transaction

    with transaction() as session:
        if connections.set_paused(session, name, True) is None:
            fail(f"no connection named {name!r}")
    click.echo(f"connection {name} paused: deliveries are stored and wait; nothing is processed or pushed")


@connection.command("resume")
@click.argument("name")
def connection_resume(name: str) -> None:
    """Resume NAME: what waited is queued again, oldest first."""
    from worker import connections
    from worker.db.session import transaction
    from worker.queue.tasks import requeue_pending

    with transaction() as session:
        conn = connections.set_paused(session, name, False)
        if conn is None:
            fail(f"no connection named {name!r}")
        connection_id = conn.id
    queued = requeue_pending(timedelta(0), connection_id)
    click.echo(f"connection {name} resumed: {queued} waiting job(s) queued")


@connection.command("remove")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Really: its hooks, deliveries, links, ledger, tickets go.")
def connection_remove(name: str, yes: bool) -> None:
    """Remove NAME: first its webhooks from Bitbucket (the ones bbsync made), then all its data
    here (deliveries, links, ledger, outbox, conflicts, its helpdesk tickets, its credential)."""
    from worker import connections
    from worker.bitbucket.errors import BitbucketError
    from worker.db.session import transaction
    from worker.sync import hooks

    if not yes:
        fail(f"this deletes connection {name!r} and all its data; run again with --yes")
    with transaction() as session:
        if connections.get(session, name) is None:
            fail(f"no connection named {name!r}")
    try:
        results = hooks.remove(name)
    except BitbucketError as exc:
        fail(f"its webhooks could not be removed, so nothing was: {exc}")
    failed = [r.error for r in results if r.error]
    if failed:
        fail("its webhooks could not all be removed, so its data was kept: " + "; ".join(failed))
    with transaction() as session:
        counts = connections.delete(session, connections.get(session, name))
    removed = sum(len(r.actions) for r in results)
    click.echo(f"connection {name} removed: {removed} webhook(s) deleted at Bitbucket, "
               + ", ".join(f"{n} {what}" for what, n in counts.items()))
