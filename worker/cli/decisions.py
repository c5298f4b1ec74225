"""`bbsync ledger` and `bbsync conflicts`: what the sync decided for a connection, and the
conflicts it left for a person."""
from __future__ import annotations

import os

import click

from worker.cli.base import fail, main
from worker.engine.states import ConflictState


@main.command("ledger")
@click.argument("name")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10000))
def ledger_cmd(name: str, limit: int) -> None:
    """Print connection NAME's ledger, newest first."""
    from worker import connections
    from worker.db import ledger
    from worker.db.session import transaction

    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            fail(f"unknown connection {name!r}")
        lines = [ledger.explain(e) for e in ledger.entries(session, conn.id, limit=limit)]
    click.echo("\n".join(lines) if lines else "the ledger is empty")


@main.group()
def conflicts() -> None:
    """Conflicts waiting for a person (policy `manual`)."""


@conflicts.command("list")
@click.argument("name")
@click.option("--state", type=click.Choice([s.value for s in ConflictState]), default=ConflictState.OPEN.value,
              show_default=True)
def conflicts_list(name: str, state: str) -> None:
    from worker import connections
    from worker.db.session import transaction
    from worker.sync import conflicts as conflict_store
    with transaction() as session:
        conn = connections.get(session, name)
        if conn is None:
            fail(f"unknown connection {name!r}")
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
        fail(str(exc))
    if push is not None:
        enqueue("push_link", push)
    click.echo(f"conflict {conflict_id} resolved: took {take}" + ("; Bitbucket update queued" if push else ""))
