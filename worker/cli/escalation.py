"""`bbsync escalate`: turn a helpdesk ticket into a Bitbucket issue."""
from __future__ import annotations

import os

import click

from worker.cli.base import fail, main


@main.command()
@click.argument("ticket_id", type=click.IntRange(1))
@click.option("--repo", required=True, help="WORKSPACE/REPO_SLUG to create the issue in.")
@click.option("--connection", "connection_name", default=None)
@click.option("--kind", type=click.Choice(["bug", "enhancement", "proposal", "task"]), default=None)
@click.option("--include-comments", is_flag=True)
@click.option("--attachment", "attachments", multiple=True, help="Attachment name (repeatable).")
def escalate(ticket_id, repo, connection_name, kind, include_comments, attachments) -> None:
    """Escalate helpdesk ticket TICKET_ID into a Bitbucket issue (idempotent).

    Runs here, not on a worker: this waits for the issue (or, while a worker is creating it,
    for that worker's result)."""
    from worker.bitbucket.errors import BitbucketError
    from worker.sync import escalate as escalation
    req = escalation.Request(ticket_id=ticket_id, repo=repo, connection=connection_name, kind=kind,
                             include_comments=include_comments, attachments=tuple(attachments),
                             actor=os.environ.get("USER"))
    try:
        result = escalation.escalate_in_process(req)
    except (LookupError, escalation.EscalationError, TimeoutError) as exc:
        fail(str(exc))
    except BitbucketError as exc:
        fail(f"Bitbucket: {exc.__class__.__name__}: {exc} (run again to resume)")
    verb = "escalated" if result.created else "already escalated"
    click.echo(f"ticket {ticket_id} {verb}: {result.repo}#{result.issue_id} {result.url or ''}".rstrip())
