"""The `bbsync` command on a database it cannot use: one clear line and exit 1, never a traceback
carrying SQL."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from worker.cli import main


@pytest.mark.parametrize("argv", [["ledger", "acme"], ["connection", "list", "--json"],
                                  ["conflicts", "list", "acme"], ["deliveries", "list", "--failed"]])
def test_a_command_on_a_database_never_migrated_says_how_to_migrate_it(settings_env, argv):
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1, result.output
    assert result.output.strip() == "Error: the database has no bbsync tables yet: run `bbsync db upgrade` first"
    assert "SELECT" not in result.output and result.exception is not None


def test_after_migrating_the_same_command_answers(db):
    result = CliRunner().invoke(main, ["connection", "list", "--json"])
    assert result.exit_code == 0 and result.output.strip() == "[]"
