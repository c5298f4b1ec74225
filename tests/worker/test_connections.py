"""Connections: validated specs, idempotent upserts, secret rotation, encryption at rest."""
from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from worker import connections, crypto
from worker.connections import ConnectionSpec, InvalidConnection
from worker.db.models import Connection, ConnectionRepo, WebhookSecret

SECRET = "hook-secret-1"


def spec(**kw) -> ConnectionSpec:
    base = dict(name="acme", repos=("acme/widgets",), webhook_secrets=(SECRET,))
    return ConnectionSpec(**{**base, **kw})


def count(session, model) -> int:
    return session.scalar(select(func.count()).select_from(model))


def stored(session, name: str = "acme") -> Connection:
    session.expire_all()
    return connections.get(session, name)


# --- create and update --------------------------------------------------------------------

def test_new_connection_is_created_with_its_repos_and_secret(session):
    conn, created = connections.upsert(session, spec(repos=("acme/widgets", "acme/gears")))
    session.commit()
    assert created
    conn = stored(session)
    assert conn.target == "local"
    assert conn.api_url == "https://api.bitbucket.org/2.0"
    assert sorted(r.full_name for r in conn.repos) == ["acme/gears", "acme/widgets"]
    assert connections.active_secrets(conn) == [SECRET]


def test_upserting_the_same_spec_twice_changes_nothing(session):
    first, _ = connections.upsert(session, spec())
    session.commit()
    ciphertext = bytes(first.secrets[0].ciphertext)
    again, created = connections.upsert(session, spec())
    session.commit()
    assert not created and again.id == first.id
    assert (count(session, Connection), count(session, ConnectionRepo),
            count(session, WebhookSecret)) == (1, 1, 1)
    # The secret row is kept as it was, not re-encrypted into a new one.
    assert bytes(stored(session).secrets[0].ciphertext) == ciphertext


def test_duplicate_repos_and_secrets_in_a_spec_are_stored_once(session):
    connections.upsert(session, spec(repos=("acme/widgets", "acme/widgets"),
                                     webhook_secrets=(SECRET, SECRET)))
    session.commit()
    assert (count(session, ConnectionRepo), count(session, WebhookSecret)) == (1, 1)


def test_update_replaces_the_repo_list(session):
    connections.upsert(session, spec(repos=("acme/widgets", "acme/gears")))
    session.commit()
    connections.upsert(session, spec(repos=("acme/gears", "acme/sprockets")))
    session.commit()
    assert sorted(r.full_name for r in stored(session).repos) == ["acme/gears", "acme/sprockets"]
    assert count(session, ConnectionRepo) == 2


def test_update_sets_api_url_without_trailing_slash_and_keeps_it_when_not_given(session):
    connections.upsert(session, spec(api_url="https://simulator.example:9000/2.0/"))
    session.commit()
    connections.upsert(session, spec())
    session.commit()
    assert stored(session).api_url == "https://simulator.example:9000/2.0"


def test_policies_and_mapping_override_are_stored(session):
    override = {"status": {"to_target": {"duplicate": "solved"}}}
    conn, _ = connections.upsert(session, spec(policies={"status": "manual"},
                                               mapping_override=override))
    session.commit()
    conn = stored(session)
    assert connections.policy_for(conn, "status") == "manual"
    assert connections.policy_for(conn, "priority") == "latest_wins"
    assert connections.tables_for(conn).to_target("status", "duplicate") == "solved"


def test_connections_are_isolated_from_each_other(session):
    connections.upsert(session, spec(name="acme", webhook_secrets=("acme-secret",)))
    connections.upsert(session, spec(name="globex", repos=("globex/app",),
                                     webhook_secrets=("globex-secret",)))
    session.commit()
    assert connections.active_secrets(stored(session, "acme")) == ["acme-secret"]
    assert connections.active_secrets(stored(session, "globex")) == ["globex-secret"]
    assert [c.name for c in connections.list_all(session)] == ["acme", "globex"]


def test_looking_up_an_impossible_name_finds_nothing(session):
    assert connections.get(session, "no such") is None
    assert connections.get(session, "acme\x00") is None
    assert connections.get(session, "missing") is None


# --- secrets ------------------------------------------------------------------------------

def test_rotation_keeps_old_and_new_active_then_only_new(session):
    connections.upsert(session, spec(webhook_secrets=("old-secret",)))
    session.commit()
    connections.upsert(session, spec(webhook_secrets=("old-secret", "new-secret")))
    session.commit()
    assert sorted(connections.active_secrets(stored(session))) == ["new-secret", "old-secret"]
    connections.upsert(session, spec(webhook_secrets=("new-secret",)))
    session.commit()
    assert connections.active_secrets(stored(session)) == ["new-secret"]
    assert count(session, WebhookSecret) == 1  # the retired secret is gone, not kept around


def test_secrets_are_encrypted_at_rest(session):
    plaintext = "a-very-recognisable-secret"
    connections.upsert(session, spec(webhook_secrets=(plaintext,)))
    session.commit()
    rows = session.execute(text("SELECT ciphertext FROM webhook_secrets")).scalars().all()
    assert len(rows) == 1
    raw = bytes(rows[0])
    assert plaintext.encode() not in raw
    assert raw != plaintext.encode()
    assert crypto.decrypt(raw) == plaintext


def test_no_column_of_any_connection_table_holds_the_plaintext(session):
    plaintext = "another-recognisable-secret"
    connections.upsert(session, spec(webhook_secrets=(plaintext,)))
    session.commit()
    for table in ("connections", "connection_repos", "webhook_secrets"):
        for row in session.execute(text(f"SELECT * FROM {table}")):
            for value in row:
                as_bytes = value if isinstance(value, bytes) else str(value).encode()
                assert plaintext.encode() not in as_bytes, table


# --- validation ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "Acme", "acme corp", "-acme", "_acme", "acme!", "a" * 65,
                                  "acme/widgets", "acmé", "acme\n"])
def test_bad_name_is_rejected_naming_it(name):
    with pytest.raises(InvalidConnection, match="connection name") as err:
        connections.validate(spec(name=name))
    assert repr(name) in str(err.value)


@pytest.mark.parametrize("name", ["a", "acme", "acme-eu_2", "0day", "a" * 64])
def test_good_names_are_accepted(name):
    connections.validate(spec(name=name))


def test_no_repos_is_rejected():
    with pytest.raises(InvalidConnection, match="at least one --repo"):
        connections.validate(spec(repos=()))


@pytest.mark.parametrize("repo", ["widgets", "acme/", "/widgets", "acme/widgets/extra",
                                  "acme widgets/x", "acme/wid gets", "https://bitbucket.org/a/b",
                                  "acme/widgets\n"])
def test_bad_repo_is_rejected_naming_it(repo):
    with pytest.raises(InvalidConnection, match="is not WORKSPACE/REPO_SLUG") as err:
        connections.validate(spec(repos=("acme/widgets", repo)))
    assert repr(repo) in str(err.value)


def test_a_connection_needs_no_secret_when_bbsync_makes_its_hooks(session):
    connections.upsert(session, spec(webhook_secrets=()))
    assert connections.active_secrets(stored(session)) == []


def test_an_update_without_secrets_keeps_them_and_one_with_secrets_leaves_generated_ones(session):
    connections.upsert(session, spec(webhook_secrets=("given-1",)))
    conn = stored(session)
    conn.secrets.append(WebhookSecret(ciphertext=crypto.encrypt("made-by-bbsync"), active=True, origin="hooks"))
    session.flush()
    connections.upsert(session, spec(webhook_secrets=()))
    assert sorted(connections.active_secrets(stored(session))) == ["given-1", "made-by-bbsync"]
    connections.upsert(session, spec(webhook_secrets=("given-2",)))
    assert sorted(connections.active_secrets(stored(session))) == ["given-2", "made-by-bbsync"]


@pytest.mark.parametrize("secret", ["", "x" * 129, "tab\there", "new\nline", "nul\x00",
                                    "bell\x07"])
def test_empty_oversized_or_non_printable_secret_is_rejected(secret):
    with pytest.raises(InvalidConnection, match="1-128 printable characters") as err:
        connections.validate(spec(webhook_secrets=(SECRET, secret)))
    assert not secret or secret not in str(err.value)  # the message never echoes a secret


def test_secret_of_exactly_128_printable_characters_is_accepted():
    connections.validate(spec(webhook_secrets=("x" * 128,)))


def test_unknown_target_is_rejected_naming_it():
    with pytest.raises(InvalidConnection, match="unknown target 'zendesk'.*local"):
        connections.validate(spec(target="zendesk"))


@pytest.mark.parametrize("url", ["ftp://api.example.com", "api.example.com/2.0",
                                 "https://api.example.com/2.0?token=abc", "https://x#frag",
                                 "https://", "https://api example.com", "https://x.org\n"])
def test_bad_api_url_is_rejected_naming_it(url):
    with pytest.raises(InvalidConnection, match="--api-url") as err:
        connections.validate(spec(api_url=url))
    assert repr(url) in str(err.value)


def test_bad_mapping_override_is_rejected_naming_the_value():
    with pytest.raises(InvalidConnection, match="mapping: .*'duplicate' maps to 'gone'"):
        connections.validate(spec(mapping_override={"status": {"to_target": {"duplicate": "gone"}}}))


def test_malformed_mapping_override_is_rejected():
    with pytest.raises(InvalidConnection, match="mapping: override for 'status' must be a table"):
        connections.validate(spec(mapping_override={"status": "closed"}))


def test_unknown_policy_is_rejected_naming_the_field_and_the_choices():
    with pytest.raises(InvalidConnection, match="policy for 'status' must be one of") as err:
        connections.validate(spec(policies={"status": "newest"}))
    assert "latest_wins" in str(err.value) and "manual" in str(err.value)


def test_policy_for_a_field_that_is_not_synced_is_rejected():
    # A typo (`priorty`) would otherwise be stored and silently never apply.
    with pytest.raises(InvalidConnection, match="priorty"):
        connections.validate(spec(policies={"priorty": "manual"}))


def test_invalid_spec_creates_nothing(session):
    with pytest.raises(InvalidConnection):
        connections.upsert(session, spec(repos=("not a repo",)))
    session.commit()
    assert count(session, Connection) == 0
    assert count(session, WebhookSecret) == 0


def test_invalid_update_leaves_the_existing_connection_as_it_was(session):
    connections.upsert(session, spec(webhook_secrets=("old-secret",)))
    session.commit()
    with pytest.raises(InvalidConnection):
        connections.upsert(session, spec(repos=("acme/gears",), webhook_secrets=("new-secret",),
                                         policies={"status": "coin_toss"}))
    session.commit()
    conn = stored(session)
    assert [r.full_name for r in conn.repos] == ["acme/widgets"]
    assert connections.active_secrets(conn) == ["old-secret"]
    assert conn.policies is None
