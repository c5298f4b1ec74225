"""`bbsync connection oauth`: the consumer is stored for an existing connection (its secret
encrypted) and a one-time link is printed alone on the last line; nothing secret is printed;
bad input is a clear error that makes nothing."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from worker.cli import main
from worker.db.oauth import OAuthAuthorization
from worker.db.session import transaction

SECRET = "consumer-secret-0123456789"


def bbsync(*argv: str, env: dict | None = None):
    return CliRunner().invoke(main, list(argv), env=env)


@pytest.fixture
def acme(db):
    assert bbsync("connection", "add", "acme", "--repo", "acme/widgets", "--webhook-secret", "s").exit_code == 0


def _rows() -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(OAuthAuthorization))


@pytest.mark.parametrize("secret_from", ["option", "env"])
def test_prints_a_one_time_link_alone_on_the_last_line_and_no_secret(acme, secret_from):
    args = ["connection", "oauth", "acme", "--client-id", "key-1", "--public-url", "http://127.0.0.1:8000/"]
    if secret_from == "option":
        made = bbsync(*args, "--client-secret", SECRET, env={"BBSYNC_OAUTH_CLIENT_SECRET": None})
    else:
        made = bbsync(*args, env={"BBSYNC_OAUTH_CLIENT_SECRET": SECRET})
    assert made.exit_code == 0, made.output
    link = made.output.strip().splitlines()[-1]
    assert link.startswith("http://127.0.0.1:8000/oauth/bitbucket/start/") and len(link.rsplit("/", 1)[1]) == 43
    assert "10 minutes" in made.output and SECRET not in made.output
    with transaction() as session:
        row = session.scalar(select(OAuthAuthorization))
        assert row.redirect_uri == "http://127.0.0.1:8000/oauth/bitbucket/callback"
        assert SECRET.encode() not in row.secret and row.client_id == "key-1"


@pytest.mark.parametrize("argv, env, message", [
    (["nobody", "--client-secret", SECRET, "--public-url", "https://127.0.0.1"], {}, "no connection named 'nobody'"),
    (["acme", "--public-url", "https://127.0.0.1"], {"BBSYNC_OAUTH_CLIENT_SECRET": None}, "BBSYNC_OAUTH_CLIENT_SECRET"),
    (["acme", "--client-secret", SECRET, "--public-url", "http://192.168.1.5"], {}, "--public-url"),
    (["acme", "--client-secret", SECRET, "--public-url", "https://user:pw@127.0.0.1"], {}, "password"),
    (["acme", "--client-secret", SECRET, "--public-url", "ftp://127.0.0.1"], {}, "--public-url"),
    (["acme", "--client-secret", "has space", "--public-url", "https://127.0.0.1"], {}, "whitespace"),
])
def test_bad_input_is_a_clear_error_that_makes_nothing(acme, argv, env, message):
    made = bbsync("connection", "oauth", *argv, "--client-id", "key-1", env=env)
    assert made.exit_code == 1 and message in made.output
    assert SECRET not in made.output and "has space" not in made.output
    assert _rows() == 0
