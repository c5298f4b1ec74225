"""`bbsync hooks ...` with broken, hostile and oversized input: a clear error, exit 1, and
nothing made (no secret, no hook row, no ledger entry)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from worker.cli import main
from worker.db.hooks import ConnectionHook
from worker.db.models import Connection, LedgerEntry, WebhookSecret
from worker.db.session import transaction


def bbsync(*argv: str):
    return CliRunner().invoke(main, list(argv))


@pytest.fixture
def acme(db):
    assert bbsync("connection", "add", "acme", "--repo", "acme/widgets").exit_code == 0


def unchanged() -> None:
    with transaction() as session:
        for model in (ConnectionHook, LedgerEntry, WebhookSecret):
            assert session.scalar(select(func.count()).select_from(model)) == 0, model
        assert session.scalar(select(Connection.hooks_public_url)) is None


def test_connection_add_without_a_secret_is_fine_now(acme):
    shown = bbsync("connection", "list")
    assert "secrets=0" in shown.output


@pytest.mark.parametrize("url, says", [
    ("http://bbsync.example", "plain http is allowed only to a loopback host"),
    ("https://192.168.0.10", "private address"),
    ("https://169.254.169.254", "link-local"),
    ("https://admin:pw@bbsync.example", "user name or password"),
    ("ftp://bbsync.example", "must be an https:// URL"),
    ("https://bbsync.example/?next=evil", "no query or fragment"),
    ("https://bbsync.example/" + "x" * 5000, "longer than 2048"),
    ("https://bbsync.example/\x00", "printable ASCII"),
    ("<script>alert(1)</script>", "must be an https:// URL"),
])
def test_register_refuses_an_unsafe_public_url(acme, url, says):
    result = bbsync("hooks", "register", "acme", "--public-url", url)
    assert result.exit_code == 1 and says in result.output and "Traceback" not in result.output
    assert "pw" not in result.output
    unchanged()


@pytest.mark.parametrize("argv, says", [
    (("hooks", "register", "nobody", "--public-url", "https://bbsync.example"), "no connection named 'nobody'"),
    (("hooks", "register", "../../etc", "--public-url", "https://bbsync.example"), "no connection named"),
    (("hooks", "register", "a" * 10000, "--public-url", "https://bbsync.example"), "no connection named"),
    (("hooks", "repair", "acme"), "has no registered hooks: bbsync hooks register acme --public-url URL"),
    (("hooks", "verify", "acme"), "has no registered hooks"),
    (("hooks", "list", "acme"), "has no registered hooks"),
    (("hooks", "rotate-secret", "acme"), "has no registered hooks to rotate"),
    (("hooks", "rotate-secret", "acme", "--overlap", "forever"), "--overlap 'forever'"),
    (("hooks", "rotate-secret", "acme", "--overlap", "-1h"), "--overlap '-1h'"),
    (("hooks", "rotate-secret", "acme", "--overlap", "99d"), "at most 30 days"),
    (("hooks", "register", "acme"), "Missing option '--public-url'"),
])
def test_bad_arguments_are_clear_errors_that_change_nothing(acme, argv, says):
    result = bbsync(*argv)
    assert result.exit_code in (1, 2) and says in result.output, result.output
    assert "Traceback" not in result.output
    unchanged()


def test_register_without_a_credential_says_so_and_records_the_secret_only(acme):
    result = bbsync("hooks", "register", "acme", "--public-url", "https://bbsync.example")
    assert result.exit_code == 1 and "has no Bitbucket credential" in result.output
    with transaction() as session:  # the secret was made first, as promised; no hook was
        assert session.scalar(select(func.count()).select_from(ConnectionHook)) == 0


def test_remove_on_a_connection_without_hooks_says_so(acme):
    result = bbsync("hooks", "remove", "acme")
    assert result.exit_code == 0 and "has no registered hooks" in result.output
    unchanged()
