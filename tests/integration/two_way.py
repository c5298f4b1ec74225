"""A connection wired to the simulator in both directions, for the two-way tests."""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

import httpx2

EVENTS = ["issue:created", "issue:updated", "issue:comment_created"]
AUTH = ("dev@acme.example", "api-token")


def wait_for(predicate, timeout: float = 30.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what} not met within {timeout:.0f} s")


@dataclass
class TwoWay:
    running: object
    state: object  # the SimulatorState
    sim_url: str
    conn: str
    repo: str

    @classmethod
    def setup(cls, running, simulator, *extra_args: str) -> "TwoWay":
        state, sim_url = simulator
        repo = f"acme/app-{uuid.uuid4().hex[:8]}"
        conn = f"c{uuid.uuid4().hex[:12]}"
        secret = "s3cret-" + uuid.uuid4().hex
        running.stack.run("connection", "add", conn, "--repo", repo, "--webhook-secret", secret,
                          "--api-url", f"{sim_url}/2.0", "--api-token", f"{AUTH[0]}:{AUTH[1]}",
                          *extra_args)
        tw = cls(running, state, sim_url, conn, repo)
        tw.api("POST", "", json={"scm": "git", "has_issues": True})
        tw.api("POST", "/hooks", json={"url": f"{running.web_url}/webhooks/bitbucket/{conn}",
                                      "secret": secret, "active": True, "events": EVENTS})
        return tw

    def api(self, method: str, path: str, **kwargs) -> dict:
        r = httpx2.request(method, f"{self.sim_url}/2.0/repositories/{self.repo}{path}", auth=AUTH,
                           timeout=15, **kwargs)
        assert r.status_code < 300, (method, path, r.status_code, r.text)
        return r.json() if r.content else {}

    def issue(self, issue_id: int) -> dict:
        return self.api("GET", f"/issues/{issue_id}")

    def ticket_for(self, issue_id: int, timeout: float = 30.0) -> dict:
        def found():
            tickets = self.running.get("/api/tickets", connection=self.conn, bitbucket_repo=self.repo,
                                       bitbucket_issue=issue_id).json()["tickets"]
            return tickets[0] if tickets else None
        return wait_for(found, timeout, f"ticket for {self.repo}#{issue_id}")

    def ticket(self, ticket_id: int) -> dict:
        return self.running.get(f"/api/tickets/{ticket_id}").json()

    def new_issue(self, **body) -> tuple[dict, dict]:
        body.setdefault("title", "Something broke")
        issue = self.api("POST", "/issues", json=body)
        return issue, self.ticket_for(issue["id"])

    def patch(self, ticket_id: int, **fields) -> dict:
        r = httpx2.patch(f"{self.running.web_url}/api/tickets/{ticket_id}", json=fields, timeout=15,
                         headers=self.running.auth)
        assert r.status_code == 200, r.text
        return r.json()

    def ledger(self) -> list[dict]:
        return self.running.get("/api/ledger", connection=self.conn, limit=500).json()["entries"]

    def settle(self, timeout: float = 30.0, quiet_polls: int = 3) -> None:
        """Until the simulator has delivered everything, every delivery is processed and the
        outbox is drained, seen on `quiet_polls` polls in a row. Work moves between the three
        (a push fires a webhook, whose processing may queue a push), so one pass that finds
        each empty in turn can miss a webhook in flight, as a busy machine showed."""
        deadline = time.monotonic() + timeout
        quiet = 0
        while quiet < quiet_polls:
            assert time.monotonic() < deadline, "timed out waiting for the sync to settle"
            idle = (self.state.wait_for_deliveries(max(0.1, deadline - time.monotonic()))
                    and not self.running.get("/api/deliveries", connection=self.conn)
                    .json()["counts"].get("received")
                    and self.running.scalar(
                        "select count(*) from outbox o join connections c on c.id = "
                        "o.connection_id where c.name = :n and o.state in ('pending', 'sending')",
                        n=self.conn) == 0)
            quiet = quiet + 1 if idle else 0
            time.sleep(0.1)

    def writes(self, path_part: str = "") -> list:
        return [r for r in self.state.request_log if r.method in ("POST", "PUT", "DELETE")
                and self.repo in r.path and path_part in r.path]

    def reads(self, path_part: str = "") -> list:
        return [r for r in self.state.request_log if r.method == "GET"
                and self.repo in r.path and path_part in r.path]
