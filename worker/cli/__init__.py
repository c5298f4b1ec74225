"""The `bbsync` command: the click group `main` (pyproject's entry point), with its commands
spread over modules by concern: connections (connection), oauth (connection oauth), decisions
(ledger, conflicts), deliveries, escalation (escalate), hooks (hooks), tokens (token) and ops
(db, reconcile, backfill, web, worker, simulator, demo). Importing a module registers its
commands on `main`."""
from worker.cli import connections, decisions, deliveries, escalation, hooks, oauth, ops, tokens  # noqa: F401
from worker.cli.base import main

__all__ = ["main"]
