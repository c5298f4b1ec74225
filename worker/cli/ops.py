"""Running bbsync: `bbsync db`, the processes (`web`, `worker`, `simulator`, `demo`), and the
polls of Bitbucket for one connection (`reconcile`, `backfill`)."""
from __future__ import annotations

import sys

import click

from config.settings import get_settings
from worker.cli.base import fail, main


@main.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to the newest schema (Alembic)."""
    from worker.db import migrate
    migrate.upgrade()
    click.echo("database is up to date")


def _connection_id(name: str) -> int:
    from worker import connections
    from worker.db.session import transaction
    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            fail(f"unknown connection {name!r}")
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
        fail(f"Bitbucket: {exc.__class__.__name__}: {exc}")
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
            fail(f"--since {since!r} is not an ISO date or date-time")
        when = when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    try:
        report = run_backfill(_connection_id(name), since=when,
                              page_callback=lambda p: click.echo(f"  {p.repo}: page {p.page}, {p.issues_seen} issue(s) so far", err=True))
    except BitbucketError as exc:
        fail(f"Bitbucket: {exc.__class__.__name__}: {exc} (run again to resume)")
    click.echo(f"backfilled {name}: {report.issues_seen} issue(s) seen, {report.deliveries_stored} stored, "
               f"{report.api_calls} API call(s), outcomes {dict(report.outcomes)}")


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
