"""The `bbsync` command."""
from __future__ import annotations

import json
import logging
import os
import sys
import tomllib

import click

from config.settings import SettingsError, get_settings


def _fail(message: str) -> None:
    raise click.ClickException(message)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """bbsync: two-way sync between Bitbucket issues and a helpdesk."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        get_settings()
    except SettingsError as exc:
        _fail(str(exc))


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from worker.db import migrate
    migrate.upgrade()
    click.echo("database is up to date")


@main.group()
def connection() -> None:
    """Connections: a customer's repositories, secrets, target and tables."""


@connection.command("add")
@click.argument("name")
@click.option("--repo", "repos", multiple=True, required=True, help="WORKSPACE/REPO_SLUG (repeatable).")
@click.option("--webhook-secret", "secrets", multiple=True, required=True,
              help="The hook's secret (repeatable: give old and new to rotate).")
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
                _fail(f"--policy {item!r}: expected FIELD=POLICY")
            parsed_policies[field.strip()] = policy.strip()

    override = None
    if mapping_file:
        try:
            with open(mapping_file, "rb") as fh:
                override = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            _fail(f"{mapping_file}: {exc}")
    spec = connections.ConnectionSpec(name=name, repos=tuple(repos), webhook_secrets=tuple(secrets),
                                      target=target, api_url=api_url, mapping_override=override,
                                      policies=parsed_policies, api_token=api_token,
                                      push_internal_notes=push_internal_notes)
    try:
        with transaction() as session:
            _conn, created = connections.upsert(session, spec)
    except connections.InvalidConnection as exc:
        _fail(str(exc))
    click.echo(f"connection {name} {'created' if created else 'updated'}: "
               f"{len(set(repos))} repo(s), {len(set(secrets))} active webhook secret(s)")


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


@main.command("ledger")
@click.argument("name")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
def ledger_cmd(name: str, limit: int) -> None:
    """Print connection NAME's ledger, newest first."""
    from worker import connections, ledger
    from worker.db.session import transaction

    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            _fail(f"unknown connection {name!r}")
        lines = [ledger.explain(e) for e in ledger.entries(session, conn.id, limit=limit)]
    click.echo("\n".join(lines) if lines else "the ledger is empty")


@main.command()
@click.argument("ticket_id", type=click.IntRange(1))
@click.option("--repo", required=True, help="WORKSPACE/REPO_SLUG to create the issue in.")
@click.option("--connection", "connection_name", default=None)
@click.option("--kind", type=click.Choice(["bug", "enhancement", "proposal", "task"]), default=None)
@click.option("--include-comments", is_flag=True)
@click.option("--attachment", "attachments", multiple=True, help="Attachment name (repeatable).")
def escalate(ticket_id, repo, connection_name, kind, include_comments, attachments) -> None:
    """Escalate helpdesk ticket TICKET_ID into a Bitbucket issue (idempotent)."""
    from worker.bitbucket.errors import BitbucketError
    from worker.sync import escalate as escalation
    req = escalation.Request(ticket_id=ticket_id, repo=repo, connection=connection_name, kind=kind,
                             include_comments=include_comments, attachments=tuple(attachments),
                             actor=os.environ.get("USER"))
    try:
        result = escalation.escalate(req)
    except (LookupError, escalation.EscalationError, TimeoutError) as exc:
        _fail(str(exc))
    except BitbucketError as exc:
        _fail(f"Bitbucket: {exc.__class__.__name__}: {exc} (run again to resume)")
    verb = "escalated" if result.created else "already escalated"
    click.echo(f"ticket {ticket_id} {verb}: {result.repo}#{result.issue_id} {result.url or ''}".rstrip())


@main.group()
def conflicts() -> None:
    """Conflicts waiting for a person (policy `manual`)."""


@conflicts.command("list")
@click.argument("name")
@click.option("--state", type=click.Choice(["open", "resolved"]), default="open", show_default=True)
def conflicts_list(name: str, state: str) -> None:
    from worker import connections
    from worker.db.session import transaction
    from worker.sync import conflicts as conflict_store
    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            _fail(f"unknown connection {name!r}")
        rows = [conflict_store.as_dict(c, link) for c, link in conflict_store.listing(session, conn.id, state)]
    if not rows:
        click.echo(f"no {state} conflicts")
    for r in rows:
        bb = r["bitbucket"]
        click.echo(f"#{r['id']:<5} {r['field']:<10} {bb['repo']}#{bb['issue_id']} <-> ticket {r['ticket']}: "
                   f"base {r['base']['bitbucket']!r}/{r['base']['target']!r}, Bitbucket {r['bitbucket_value']!r}, "
                   f"helpdesk {r['target_value']!r}" + (f"  [{r['resolution']}]" if r["resolution"] else ""))


@conflicts.command("resolve")
@click.argument("conflict_id", type=click.IntRange(1))
@click.option("--take", type=click.Choice(["bitbucket", "target", "value"]), required=True)
@click.option("--value", default=None, help="The helpdesk value to set, with --take value.")
def conflicts_resolve(conflict_id: int, take: str, value: str | None) -> None:
    from worker.db.session import transaction
    from worker.sync import conflicts as conflict_store
    from worker.queue.tasks import enqueue
    try:
        with transaction() as session:
            push = conflict_store.resolve(session, conflict_id, take, value, os.environ.get("USER"))
    except (LookupError, conflict_store.ResolutionError) as exc:
        _fail(str(exc))
    if push is not None:
        enqueue("push_link", push)
    click.echo(f"conflict {conflict_id} resolved: took {take}" + ("; Bitbucket update queued" if push else ""))


def _connection_id(name: str) -> int:
    from worker import connections
    from worker.db.session import transaction
    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            _fail(f"unknown connection {name!r}")
        return conn.id


@main.command()
@click.argument("name")
@click.option("--comments", type=click.Choice(["none", "missed", "changed", "all"]), default="changed",
              show_default=True,
              help="Which comments to list (one call per issue): 'none'; 'missed' (issues whose webhooks "
                   "were lost); 'changed' (issues touched since the last comment pass); 'all' (every "
                   "linked issue: finds edits and deletions, which have no webhook).")
def reconcile(name: str, comments: str) -> None:
    """Poll Bitbucket now for what connection NAME's webhooks missed."""
    from worker.bitbucket.errors import BitbucketError
    from worker.sync.reconcile import reconcile_connection
    from worker.queue.tasks import enqueue, enqueue_delivery
    try:
        report = reconcile_connection(_connection_id(name), comments=comments)
    except BitbucketError as exc:
        _fail(f"Bitbucket: {exc.__class__.__name__}: {exc}")
    for delivery_id in report.enqueue:
        enqueue_delivery(delivery_id)
    for link_id in report.stuck_links:
        enqueue("push_link", link_id)
    click.echo(f"reconciled {name}: {report.api_calls} API call(s), {report.issues_seen} issue(s) seen, "
               f"{report.deliveries_stored} stored, outcomes {dict(report.outcomes)}"
               + (f", errors: {'; '.join(report.errors)}" if report.errors else ""))


@main.command()
@click.argument("name")
@click.option("--since", default=None, help="Only issues updated since this ISO date/time.")
def backfill(name: str, since: str | None) -> None:
    """Import connection NAME's existing issues and comments (streaming, resumable, idempotent)."""
    from datetime import datetime, timezone
    from worker.bitbucket.errors import BitbucketError
    from worker.sync.backfill import backfill as run_backfill
    when = None
    if since:
        try:
            when = datetime.fromisoformat(since)
        except ValueError:
            _fail(f"--since {since!r} is not an ISO date or date-time")
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    try:
        report = run_backfill(_connection_id(name), since=when,
                              page_callback=lambda p: click.echo(f"  {p.repo}: page {p.page}, {p.issues_seen} issue(s) so far", err=True))
    except BitbucketError as exc:
        _fail(f"Bitbucket: {exc.__class__.__name__}: {exc} (run again to resume)")
    click.echo(f"backfilled {name}: {report.issues_seen} issue(s) seen, {report.deliveries_stored} stored, "
               f"{report.api_calls} API call(s), outcomes {dict(report.outcomes)}")


@main.group()
def deliveries() -> None:
    """Stored webhook deliveries."""


@deliveries.command("list")
@click.option("--connection", "connection_name", default=None)
@click.option("--failed", is_flag=True, help="Only failed (dead-lettered) and held deliveries.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
def deliveries_list(connection_name: str | None, failed: bool, limit: int) -> None:
    """Stored deliveries, newest first, with why each failed one failed."""
    from sqlalchemy import select
    from worker import connections
    from worker.db.models import Delivery
    from worker.db.session import transaction
    from worker.engine.states import DELIVERY_STUCK
    with transaction() as session:
        query = select(Delivery).order_by(Delivery.received_at.desc()).limit(limit)
        if connection_name:
            conn = connections.get(session, connection_name)
            if conn is None:
                _fail(f"unknown connection {connection_name!r}")
            query = query.where(Delivery.connection_id == conn.id)
        if failed:
            query = query.where(Delivery.status.in_(DELIVERY_STUCK))
        rows = list(session.scalars(query))
        lines = [f"{d.id}  {d.received_at:%Y-%m-%d %H:%M:%S}  {d.status:<9} {d.event_key:<22} "
                 f"{d.issue_key or '-':<30} {d.error or ''}" for d in rows]
    click.echo("\n".join(lines) if lines else "no deliveries")


@deliveries.command("replay")
@click.argument("delivery_id", required=False)
@click.option("--failed", "all_failed", is_flag=True, help="Replay every failed delivery.")
def deliveries_replay(delivery_id: str | None, all_failed: bool) -> None:
    """Process a failed delivery again once its cause is fixed (or every one, with --failed)."""
    from worker.db.session import transaction
    from worker.sync import deliveries as store
    from worker.queue.tasks import enqueue_delivery
    if bool(delivery_id) == all_failed:
        _fail("give a DELIVERY_ID or --failed")
    try:
        with transaction() as session:
            ids = (store.requeue_all_failed(session, None, os.environ.get("USER")) if all_failed
                   else store.replay(session, delivery_id, os.environ.get("USER")))
    except (LookupError, store.DeliveryError) as exc:
        _fail(str(exc))
    queued = sum(enqueue_delivery(i) for i in ids)
    click.echo(f"replaying {len(ids)} delivery(ies); {queued} queued")


@deliveries.command("dismiss")
@click.argument("delivery_id")
def deliveries_dismiss(delivery_id: str) -> None:
    """Give up on a failed delivery; the events held behind it continue."""
    from worker.db.session import transaction
    from worker.sync import deliveries as store
    from worker.queue.tasks import enqueue_delivery
    try:
        with transaction() as session:
            released = store.dismiss(session, delivery_id, os.environ.get("USER"))
    except (LookupError, store.DeliveryError) as exc:
        _fail(str(exc))
    for i in released:
        enqueue_delivery(i)
    click.echo(f"dismissed {delivery_id}; {len(released)} held delivery(ies) released")


@deliveries.command("requeue")
def deliveries_requeue() -> None:
    """Enqueue stored deliveries that were never processed (e.g. after a broker outage)."""
    from datetime import timedelta
    from worker.queue.tasks import requeue_pending
    click.echo(f"enqueued {requeue_pending(older_than=timedelta(0))} delivery(ies)")


@deliveries.command("enqueue")
@click.argument("delivery_ids", nargs=-1, required=True)
def deliveries_enqueue(delivery_ids: tuple[str, ...]) -> None:
    """Queue deliveries by id again. Safe: a delivery already processed is skipped."""
    from worker.queue.tasks import enqueue_delivery
    for delivery_id in delivery_ids:
        if not delivery_id.isalnum() or len(delivery_id) > 32:
            _fail(f"{delivery_id!r} is not a delivery id")
    queued = sum(enqueue_delivery(d) for d in delivery_ids)
    click.echo(f"enqueued {queued} of {len(delivery_ids)}")


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=7990, show_default=True, type=click.IntRange(1, 65535))
def simulator(host: str, port: int) -> None:
    """Serve the Bitbucket simulator (REST API under /2.0/, OAuth, webhooks)."""
    from simulator import serve
    click.echo(f"Bitbucket simulator on http://{host}:{port}/2.0/")
    serve(host=host, port=port)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=None, help="Default: $PORT.")
def web(host: str, port: int | None) -> None:
    """Serve the web app with a development server (production: the Procfile's gunicorn)."""
    from werkzeug.serving import run_simple
    from webhooks import create_app
    run_simple(host, port or get_settings().port, create_app(), threaded=True)


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a Celery worker (extra arguments go to `celery worker`)."""
    from worker.queue.celery_app import app
    app.worker_main(["worker", "--loglevel=INFO", *ctx.args])


@main.command()
def demo() -> None:
    """Run the end-to-end demo on the embedded default (no servers needed)."""
    from devstack.demo import run
    sys.exit(run())


if __name__ == "__main__":  # pragma: no cover
    main()
