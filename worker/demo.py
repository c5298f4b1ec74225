"""`bbsync demo`: the whole forward flow on the embedded default, with real processes.

It starts the Bitbucket simulator, the web app (gunicorn) and a Celery worker on SQLite and
the no-server broker, registers a connection and a webhook, then plays a developer's day in
Bitbucket through its REST API. The simulator delivers real signed webhooks over HTTP; the
resulting tickets and the ledger are printed.
"""
from __future__ import annotations

import os
import secrets
import shutil
import sys
import time
from pathlib import Path

import httpx2

from worker.stack import Stack, free_port, wait_http

REPO = "acme/widgets"
CONNECTION = "acme"
# The simulator accepts any non-empty credentials; Bitbucket API tokens are email + token.
API_AUTH = ("dev@acme.example", "demo-api-token")
#: Every edit in _bitbucket_day fires one webhook: 3 creations + 5 edits.
WEBHOOKS_FIRED = 8


def _say(text: str) -> None:
    print(text, flush=True)


def _bitbucket_day(api: httpx2.Client, hook_url: str, hook_secret: str) -> None:
    """What a developer does in Bitbucket; every edit fires a webhook, as on Bitbucket."""
    base = f"/repositories/{REPO}"
    api.post(base, json={"scm": "git", "has_issues": True}).raise_for_status()
    api.post(f"{base}/hooks", json={
        "url": hook_url, "description": "bbsync", "active": True, "secret": hook_secret,
        "events": ["issue:created", "issue:updated", "issue:comment_created"],
    }).raise_for_status()
    _say(f"  registered a webhook on {REPO} -> {hook_url}")

    first = api.post(f"{base}/issues", json={
        "title": "Checkout fails on Safari 17", "kind": "bug", "priority": "critical",
        "content": {"raw": "Customers on Safari 17 get a blank page after *Pay now*."}}).json()
    second = api.post(f"{base}/issues", json={
        "title": "Dark mode for the dashboard", "kind": "enhancement", "priority": "minor",
        "content": {"raw": "Asked for by three customers this month."}}).json()
    third = api.post(f"{base}/issues", json={
        "title": "Export to CSV drops the last row", "kind": "bug", "priority": "major"}).json()
    _say(f"  created issues #{first['id']}, #{second['id']}, #{third['id']}")

    api.put(f"{base}/issues/{first['id']}", json={"state": "open"}).raise_for_status()
    api.post(f"{base}/issues/{first['id']}/comments",
             json={"content": {"raw": "Reproduced: the payment iframe is blocked by ITP."}}).raise_for_status()
    api.post(f"{base}/issues/{first['id']}/changes", json={
        "changes": {"state": {"new": "resolved"}},
        "message": {"raw": "Fixed in 1.4.2 by loading the iframe from our own domain."}}).raise_for_status()
    api.put(f"{base}/issues/{second['id']}", json={"priority": "blocker", "kind": "proposal"}).raise_for_status()
    api.put(f"{base}/issues/{third['id']}", json={"state": "duplicate"}).raise_for_status()
    _say("  opened, commented on and resolved #1; re-prioritised #2; marked #3 a duplicate")


def _wait_quiet(web: str, expected: int, timeout: float = 30.0) -> None:
    """Until the expected webhooks have arrived and the worker has processed every one."""
    deadline = time.monotonic() + timeout
    counts: dict = {}
    while time.monotonic() < deadline:
        counts = httpx2.get(f"{web}/api/deliveries", params={"connection": CONNECTION},
                            timeout=10).json()["counts"]
        if sum(counts.values()) >= expected and not counts.get("received"):
            return
        time.sleep(0.2)
    raise TimeoutError(f"the worker did not catch up within {timeout:.0f} s: {counts}")


def _print_tickets(web: str) -> None:
    tickets = httpx2.get(f"{web}/api/tickets", params={"connection": CONNECTION}, timeout=10).json()["tickets"]
    _say(f"\nHelpdesk tickets ({len(tickets)}):")
    for t in tickets:
        bb = t["bitbucket"]
        _say(f"  #{t['id']} {t['title']!r}  status={t['status']} priority={t['priority']} "
             f"type={t['type']}  <- {bb['repo']}#{bb['issue_id']}")
        for c in t["comments"]:
            kind = "internal note" if c["internal"] else "public reply"
            _say(f"      {kind} by {c['author']}: {c['body']}")


def run() -> int:
    started = time.monotonic()
    var = Path("var") / "demo"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env["BBSYNC_VAR_DIR"] = str(var.resolve())
    stack = Stack(env=env, log_dir=var)
    try:
        _say("bbsync demo (embedded default: SQLite + filesystem broker, no servers needed)")
        stack.run("db", "upgrade")
        sim_port = free_port()
        sim = stack._spawn("simulator", [sys.executable, "-m", "simulator", "--port", str(sim_port)])
        wait_http(f"http://127.0.0.1:{sim_port}/_sim/requests", proc=sim)
        stack.start_worker()
        web = stack.start_web(workers=1, threads=4)
        _say(f"  started the Bitbucket simulator, a Celery worker and the web app at {web}")

        hook_secret = secrets.token_urlsafe(24)
        stack.run("connection", "add", CONNECTION, "--repo", REPO, "--webhook-secret", hook_secret)
        _say(f"  registered connection {CONNECTION!r} for {REPO}")

        with httpx2.Client(base_url=f"http://127.0.0.1:{sim_port}/2.0", auth=API_AUTH, timeout=10) as api:
            _bitbucket_day(api, f"{web}/webhooks/bitbucket/{CONNECTION}", hook_secret)
            _wait_quiet(web, expected=WEBHOOKS_FIRED)
        _print_tickets(web)
        _say(f"\nLedger for {CONNECTION} (newest first):")
        _say(stack.run("ledger", CONNECTION, "--limit", "60").stdout.rstrip())
        _say(f"\ndemo finished in {time.monotonic() - started:.1f} s; logs in {var}")
        return 0
    except Exception as exc:  # the demo must say what broke, then point at the logs
        _say(f"demo failed: {exc.__class__.__name__}: {exc}\n(logs in {var})")
        return 1
    finally:
        stack.close()
