"""`bbsync token create|list|revoke`: a token is printed once, alone on the last line; the list
never shows one; bad input is a clear error that makes nothing."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from worker import tokens
from worker.cli import main
from worker.db.session import transaction


def bbsync(*argv: str):
    return CliRunner().invoke(main, list(argv))


@pytest.fixture
def acme(db):
    assert bbsync("connection", "add", "acme", "--repo", "acme/widgets", "--webhook-secret", "s").exit_code == 0


def test_create_prints_the_token_once_and_list_shows_its_scope_but_never_it(acme):
    made = bbsync("token", "create", "support", "--connection", "acme", "--read-only")
    assert made.exit_code == 0, made.output
    token = made.output.strip().splitlines()[-1]
    assert tokens.TOKEN_RE.fullmatch(token)
    with transaction() as session:
        assert tokens.authenticate(session, f"Bearer {token}").name == "support"
    listed = bbsync("token", "list")
    assert listed.exit_code == 0
    assert "support  scope=acme  read-only" in listed.output and token not in listed.output
    assert tokens.digest(token) not in listed.output


def test_revoke_refuses_the_token_from_then_on(acme):
    token = bbsync("token", "create", "ops", "--admin").output.strip().splitlines()[-1]
    assert bbsync("token", "revoke", "ops").exit_code == 0
    with transaction() as session, pytest.raises(tokens.Rejected, match="revoked"):
        tokens.authenticate(session, f"Bearer {token}")
    assert "REVOKED" in bbsync("token", "list").output


@pytest.mark.parametrize("argv, message", [
    (["token", "create", "x"], "either --admin"),
    (["token", "create", "x", "--admin", "--connection", "acme"], "either --admin"),
    (["token", "create", "x", "--connection", "nosuch"], "no connection named 'nosuch'"),
    (["token", "create", "bad name", "--admin"], "token name"),
    (["token", "create", "x\x00y", "--admin"], "token name"),
    (["token", "create", "x" * 500, "--admin"], "token name"),
    (["token", "revoke", "nosuch"], "no token named 'nosuch'"),
    (["token", "revoke", "x" * 500], "no token named"),
])
def test_bad_input_is_a_clear_error_and_makes_nothing(acme, argv, message):
    result = bbsync(*argv)
    assert result.exit_code != 0 and message in result.output, result.output
    assert "no tokens" in bbsync("token", "list").output


def test_connection_show_tells_everything_but_secrets(acme):
    import json
    assert bbsync("connection", "add", "acme", "--repo", "acme/widgets", "--webhook-secret", "s3cret-hook",
                  "--api-token", "me@acme.example:very-secret-api-token").exit_code == 0
    token = bbsync("token", "create", "agent", "--connection", "acme").output.strip().splitlines()[-1]
    shown = bbsync("connection", "show", "acme")
    assert shown.exit_code == 0, shown.output
    details = json.loads(shown.output)
    assert details["repos"] == ["acme/widgets"] and details["credential_kind"] == "api_token"
    assert details["api_tokens"] == ["agent"] and details["webhook_secrets"] == 1
    assert details["hooks"] == {"public_url": None, "recorded": [],
                                "secrets": {"given": 1, "generated": 0, "retiring": []}}
    for secret in ("s3cret-hook", "very-secret-api-token", token):
        assert secret not in shown.output
    missing = bbsync("connection", "show", "nosuch\x00")
    assert missing.exit_code == 1 and "no connection named" in missing.output
