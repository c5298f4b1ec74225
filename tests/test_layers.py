"""Imports point one way: config -> engine -> db -> sides (Bitbucket client, targets) -> sync ->
queue -> web and CLI. Read from the source (ast), so that a forbidden import fails here even
if nothing runs it yet."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _imports(package: str) -> dict[str, set[str]]:
    """module path -> every module (and `module.Name`) it imports, at any depth."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
        found[str(path.relative_to(ROOT))] = names
    return found


def _offending(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    return {module: sorted(n for n in names if n.startswith(forbidden))
            for module, names in _imports(package).items()
            if any(n.startswith(forbidden) for n in names)}


@pytest.mark.parametrize("package, forbidden", [
    # The engine decides on values: no storage, no network, no runner.
    ("worker.engine", ("worker.db", "worker.sync", "worker.bitbucket", "worker.targets", "worker.queue",
                       "webhooks", "sqlalchemy", "httpx2", "celery")),
    # Every table and the ledger, and nothing above them (Alembic loads only this and the pure
    # engine's words, below it).
    ("worker.db", ("worker.sync", "worker.bitbucket", "worker.targets", "worker.queue", "webhooks")),
    # The sides know nothing of the runner, the queue or the web.
    ("worker.bitbucket", ("worker.sync", "worker.queue", "webhooks", "worker.targets")),
    ("worker.targets", ("worker.sync", "worker.queue", "webhooks", "worker.bitbucket")),
    # The runner reaches the helpdesk only through the Side interface.
    ("worker.sync", ("worker.queue", "webhooks", "worker.targets.local", "worker.db.helpdesk")),
])
def test_imports_point_one_way(package, forbidden):
    assert _offending(package, forbidden) == {}
