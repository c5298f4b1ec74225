"""`bbsync hooks`: the Bitbucket webhooks bbsync makes and keeps for a connection
(worker.sync.hooks)."""
from __future__ import annotations

import json
import re
from datetime import timedelta

import click

from worker.cli.base import fail, main

_DURATION = re.compile(r"^(\d{1,6})([smhd])$")


@main.group()
def hooks() -> None:
    """Webhooks on the connection's repositories: register, list, verify, repair, remove,
    rotate-secret."""


def _run(operation, *args, **kwargs):
    from config.outbound import UnsafeUrl
    from worker.bitbucket.errors import BitbucketError
    from worker.sync.hooks import HooksError
    try:
        return operation(*args, **kwargs)
    except (HooksError, UnsafeUrl) as exc:
        fail(str(exc))
    except BitbucketError as exc:  # before any repository (e.g. no credential)
        fail(str(exc))


def _report(results, verb: str) -> None:
    for r in results:
        if r.error:
            click.echo(f"{r.repo}: FAILED: {r.error.split(': ', 1)[-1]}", err=True)
        else:
            done = ", ".join(r.actions) or "no change"
            click.echo(f"{r.repo}: {done}; {r.state.state if r.state else verb}")
    if any(r.error for r in results):
        raise SystemExit(1)


@hooks.command("register")
@click.argument("name")
@click.option("--public-url", required=True, help="Where Bitbucket reaches this deployment "
              "(https, or http to a loopback host); hooks call URL/webhooks/bitbucket/NAME.")
def hooks_register(name: str, public_url: str) -> None:
    """Ensure one bbsync hook on each repository of connection NAME (idempotent)."""
    from worker.sync import hooks as ops
    _report(_run(ops.register, name, public_url), "registered")


@hooks.command("repair")
@click.argument("name")
def hooks_repair(name: str) -> None:
    """Put back what drifted or went missing (as beat does every 15 minutes)."""
    from worker.sync import hooks as ops
    _report(_run(ops.register, name), "repaired")


@hooks.command("list")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True)
def hooks_list(name: str, as_json: bool) -> None:
    """Each repository's hook: id, url, events, active, secret set, state."""
    from worker.sync import hooks as ops
    results = _run(ops.inspect, name)
    rows = [_row(r) for r in results]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            click.echo(f"{row['repo']}  hook={row['hook'] or '-'}  active={row['active']}  "
                       f"secret_set={row['secret_set']}  events={','.join(row['events'])}  "
                       f"url={row['url'] or '-'}  state={row['state']}")
    if any(r.error for r in results):
        raise SystemExit(1)


def _row(r) -> dict:
    hook = (r.state.hook if r.state else None) or {}
    return {"repo": r.repo, "hook": hook.get("uuid"), "url": hook.get("url"),
            "events": hook.get("events") or [], "active": hook.get("active"),
            "secret_set": hook.get("secret_set"),
            "state": r.error and f"error: {r.error.split(': ', 1)[-1]}" or r.state.state}


@hooks.command("verify")
@click.argument("name")
def hooks_verify(name: str) -> None:
    """Exit 0 when every repository's hook is as registered, 1 naming each drift."""
    from worker.sync import hooks as ops
    results = _run(ops.inspect, name)
    for r in results:
        click.echo(f"{r.repo}: {r.error or r.state.state}")
    if not all(r.ok for r in results):
        raise SystemExit(1)


@hooks.command("remove")
@click.argument("name")
def hooks_remove(name: str) -> None:
    """Delete bbsync's hooks of connection NAME from Bitbucket, and their secrets."""
    from worker.sync import hooks as ops
    results = _run(ops.remove, name)
    if not results:
        click.echo(f"connection {name} has no registered hooks")
    _report(results, "removed")


@hooks.command("rotate-secret")
@click.argument("name")
@click.option("--overlap", default="1h", show_default=True,
              help="How long deliveries signed with the old secret are still accepted (30m, 1h, 2d).")
def hooks_rotate(name: str, overlap: str) -> None:
    """Give every hook a new secret; the old one is accepted until the overlap ends."""
    from worker.sync import hooks as ops
    match = _DURATION.fullmatch(overlap.strip())
    if not match:
        fail(f"--overlap {overlap!r}: a number and s, m, h or d (e.g. 1h)")
    amount, unit = int(match[1]), match[2]
    delta = timedelta(**{{"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[unit]: amount})
    if delta > timedelta(days=30):
        fail("--overlap: at most 30 days")
    _report(_run(ops.rotate, name, delta), "rotated")
