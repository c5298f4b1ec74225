"""`bbsync demo`: both directions on the embedded default, with real processes.

It starts the Bitbucket simulator, the web app (gunicorn) and a Celery worker on SQLite and
the no-server broker, registers a connection and a webhook, then plays a day between a support
agent (the helpdesk API) and a developer (Bitbucket's REST API on the simulator). Every
Bitbucket edit fires a real signed webhook over HTTP; every helpdesk edit goes back to
Bitbucket through the outbox. At the end it prints the ticket, the Bitbucket issue and the
ledger.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import httpx2

from devstack.stack import Stack, free_port, wait_http

REPO = "acme/widgets"
CONNECTION = "acme"
# The simulator accepts any non-empty credentials; Bitbucket API tokens are email + token.
DEVELOPER = ("dev@acme.example", "developer-api-token")  # a person using Bitbucket
SYNC_TOKEN = "bbsync@acme.example:bbsync-api-token"  # the credential bbsync writes with


def _say(text: str = "") -> None:
    print(text, flush=True)


class Demo:
    def __init__(self, stack: Stack, web: str, sim: str):
        self.stack, self.web, self.sim = stack, web, sim
        self.bb_base = f"{sim}/2.0/repositories/{REPO}"
        self.bb = httpx2.Client(auth=DEVELOPER, timeout=15)
        self.hd = httpx2.Client(base_url=f"{web}/api", timeout=60, headers={"X-Actor": "ana@support"})

    def bitbucket(self, method: str, path: str = "", **kw) -> dict:
        r = self.bb.request(method, self.bb_base + path, **kw)
        r.raise_for_status()
        return r.json() if r.content else {}

    def helpdesk(self, method: str, path: str, **kw) -> dict:
        r = self.hd.request(method, path, **kw)
        if r.status_code >= 300:
            raise RuntimeError(f"{method} /api{path}: {r.status_code} {r.text}")
        return r.json()

    def quiet(self, timeout: float = 45.0) -> None:
        """Until the simulator has delivered every webhook and the worker has done all work."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            httpx2.get(f"{self.sim}/_sim/deliveries", params={"wait": 5}, timeout=10)
            received = self.helpdesk("GET", "/deliveries", params={"connection": CONNECTION})["counts"]
            outbox = self.helpdesk("GET", "/outbox", params={"connection": CONNECTION})["counts"]
            if not received.get("received") and not outbox.get("pending") and not outbox.get("sending"):
                return
            time.sleep(0.2)
        raise TimeoutError("the worker did not catch up")

    def escalated(self, ticket_id: int, timeout: float = 45.0) -> int:
        """The issue id, once the worker has escalated the ticket (the API answers at once and
        queues the escalation; the ticket shows where it stands)."""
        deadline = time.monotonic() + timeout
        escalation = None
        while time.monotonic() < deadline:
            ticket = self.helpdesk("GET", f"/tickets/{ticket_id}")
            escalation = ticket.get("escalation") or {}
            if escalation.get("state") == "failed":
                raise RuntimeError(f"the escalation of ticket {ticket_id} failed: {escalation.get('error')}")
            if escalation.get("state") == "done" and ticket["bitbucket"]:
                return ticket["bitbucket"]["issue_id"]
            time.sleep(0.2)
        raise TimeoutError(f"ticket {ticket_id} was not escalated within {timeout:.0f} s "
                           f"(last state: {escalation}); is the worker running?")

    def setup(self) -> None:
        self.stack.run("connection", "add", CONNECTION, "--repo", REPO,
                       "--api-url", f"{self.sim}/2.0", "--api-token", SYNC_TOKEN)
        # The helpdesk calls the API as any client would: with a token made for it (shown
        # once), which sees this connection only; the tickets it makes belong to it.
        made = self.stack.run("token", "create", "demo-agent", "--connection", CONNECTION)
        self.hd.headers["Authorization"] = f"Bearer {made.stdout.strip().splitlines()[-1]}"
        self.bitbucket("POST", json={"scm": "git", "has_issues": True})
        # bbsync makes the repository's webhook itself, with a secret it generates.
        self.stack.run("hooks", "register", CONNECTION, "--public-url", self.web)
        _say(f"  connection {CONNECTION!r} syncs {REPO}; `bbsync hooks register` made its signed "
             f"webhook; API token 'demo-agent' (scoped to {CONNECTION!r}) made")

    def play(self) -> tuple[int, int]:
        ticket = self.helpdesk("POST", "/tickets", json={
            "title": "Checkout fails on Safari 17", "type": "incident", "priority": "urgent",
            "reporter": "jane@customer.example",
            "description": "Since this morning every checkout on Safari 17 ends on a blank page "
                           "after 'Pay now'. Order refs 18812, 18813."})
        self.hd.post(f"/tickets/{ticket['id']}/attachments",
                     files={"files": ("safari-console.txt", b"Refused to frame https://pay.example/\n",
                                      "text/plain")}).raise_for_status()
        _say(f"1. agent: ticket #{ticket['id']} from jane@customer.example, with safari-console.txt")
        self.helpdesk("POST", f"/tickets/{ticket['id']}/escalate",
                      json={"repo": REPO, "attachments": ["safari-console.txt"]})  # 202: queued
        issue_id = self.escalated(ticket["id"])
        _say(f"2. agent escalates it: the worker creates Bitbucket issue {REPO}#{issue_id} (attachment uploaded)")
        self.quiet()

        self.bitbucket("POST", f"/issues/{issue_id}/comments",
                       json={"content": {"raw": "Reproduced: ITP blocks the payment iframe."}})
        self.bitbucket("POST", f"/issues/{issue_id}/changes", json={
            "changes": {"state": {"new": "resolved"}},
            "message": {"raw": "Fixed in 1.4.2: the iframe is served from our own domain."}})
        _say("3. developer comments on the issue and resolves it, in Bitbucket")
        self.quiet()

        self.helpdesk("POST", f"/tickets/{ticket['id']}/comments", json={
            "body": "The fix is live; please reload the page and try again.", "author": "Ana (support)"})
        self.helpdesk("POST", f"/tickets/{ticket['id']}/comments", json={
            "body": "Jane's account is on the enterprise plan: follow up personally.",
            "internal": True, "author": "Ana (support)"})
        _say("4. agent replies publicly (goes to Bitbucket) and adds an internal note (stays here)")
        self.quiet()

        # Both sides change the priority at once. The worker is paused for a moment so that
        # the two edits truly cross, whatever the machine's speed.
        self.stack.stop("worker")
        self.helpdesk("PATCH", f"/tickets/{ticket['id']}", json={"priority": "high"})
        self.bitbucket("PUT", f"/issues/{issue_id}", json={"priority": "minor"})
        self.stack.start_worker()
        _say("5. both sides change the priority at the same time: agent 'high', developer 'minor'")
        self.quiet()

        other = self.bitbucket("POST", "/issues", json={
            "title": "Export to CSV drops the last row", "kind": "bug", "priority": "major"})
        self.bitbucket("PUT", f"/issues/{other['id']}", json={"state": "duplicate"})
        _say(f"6. developer files {REPO}#{other['id']} and marks it a duplicate; it syncs as 'closed'")
        self.quiet()
        return ticket["id"], issue_id

    def report(self, ticket_id: int, issue_id: int) -> None:
        t = self.helpdesk("GET", f"/tickets/{ticket_id}")
        _say(f"\nHelpdesk ticket #{t['id']}: {t['title']!r}  status={t['status']} priority={t['priority']} "
             f"type={t['type']}  <- {t['bitbucket']['repo']}#{t['bitbucket']['issue_id']}")
        for c in t["comments"]:
            _say(f"    {'internal note' if c['internal'] else 'public reply '} by {c['author']}: {c['body']}")
        i = self.bitbucket("GET", f"/issues/{issue_id}")
        _say(f"Bitbucket issue {REPO}#{issue_id}: {i['title']!r}  state={i['state']} priority={i['priority']} "
             f"kind={i['kind']}")
        comments = self.bitbucket("GET", f"/issues/{issue_id}/comments")["values"]
        for c in comments:
            if c["content"]["raw"]:
                _say(f"    comment by {c['user']['display_name']}: {c['content']['raw'].splitlines()[0]}")
        names = [a["name"] for a in self.bitbucket("GET", f"/issues/{issue_id}/attachments")["values"]]
        _say(f"    attachments: {', '.join(names) or 'none'}")
        leaked = any("enterprise plan" in (c["content"]["raw"] or "") for c in comments)
        _say(f"    internal note on Bitbucket: {'LEAKED' if leaked else 'no (kept in the helpdesk)'}")
        conflicts = [e for e in self.helpdesk("GET", "/ledger", params={"connection": CONNECTION,
                                                                         "limit": 500})["entries"]
                     if e["outcome"] == "conflict"]
        for c in conflicts:
            _say(f"    conflict on {c['field']}: Bitbucket {c['bitbucket_value']!r} vs helpdesk "
                 f"{c['target_value']!r}, policy {c['policy']}, winner {c['winner']}")
        _say(f"\nLedger for {CONNECTION} (newest first):")
        _say(self.stack.run("ledger", CONNECTION, "--limit", "60").stdout.rstrip())
        if leaked:
            raise RuntimeError("an internal note reached Bitbucket")


def run() -> int:
    started = time.monotonic()
    var = Path("var") / "demo"
    shutil.rmtree(var, ignore_errors=True)
    var.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "BROKER_URL")}
    env["BBSYNC_VAR_DIR"] = str(var.resolve())
    stack = Stack(env=env, log_dir=var)
    try:
        _say("bbsync demo (embedded default: SQLite + a broker with no server)")
        stack.run("db", "upgrade")
        sim_port = free_port()
        sim = stack._spawn("simulator", [sys.executable, "-m", "simulator", "--port", str(sim_port)])
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_http(f"{sim_url}/_sim/requests", proc=sim)
        stack.start_worker()
        web = stack.start_web(workers=1, threads=4)
        _say(f"  started the Bitbucket simulator ({sim_url}), a Celery worker and the web app ({web})")
        demo = Demo(stack, web, sim_url)
        demo.setup()
        ticket_id, issue_id = demo.play()
        demo.report(ticket_id, issue_id)
        _say(f"\ndemo finished in {time.monotonic() - started:.1f} s; logs in {var}")
        return 0
    except Exception as exc:  # the demo must say what broke, then point at the logs
        _say(f"demo failed: {exc.__class__.__name__}: {exc}\n(logs in {var})")
        return 1
    finally:
        stack.close()
