"""Credentials: parsing with clear errors, encrypted storage, and no secret in any repr."""
from __future__ import annotations

import pytest
from sqlalchemy import select

from worker.bitbucket.auth import ApiTokenAuth, BearerAuth, OAuthAuth
from worker.bitbucket.credentials import (ApiToken, BearerToken, CredentialNotFound, OAuthCredential,
                                          bearer_token, oauth_credential, parse_api_token)
from worker.db.credentials import Credential

from .helpers import CLIENT_ID, CLIENT_SECRET, EMAIL, TOKEN


def test_an_api_token_is_email_colon_token():
    cred = parse_api_token(f"{EMAIL}:{TOKEN}")
    assert cred == ApiToken(EMAIL, TOKEN)
    assert cred.key == "api_token:dev@example.com"


def test_the_token_may_contain_colons():
    assert parse_api_token("a@b.example:tok:en").token == "tok:en"


@pytest.mark.parametrize("value, message", [
    ("no-colon-at-all", "expected EMAIL:TOKEN"),
    ("not-an-email:SECRETTOKEN", "account email"),
    ("@example.com:SECRETTOKEN", "account email"),
    ("dev@:SECRETTOKEN", "account email"),
    ("dev @example.com:SECRETTOKEN", "account email"),
    ("dev@example.com:", "API token after ':' is empty"),
    ("dev@example.com:SECRET TOKEN", "must not contain whitespace"),
    ("dev@example.com:SECRETTOKEN\n", "must not contain whitespace"),
    ("dev@example.com:" + "SECRETTOKEN" * 50, "longer than 512"),
    ("dev@example.com:SECRETTOKENé", "printable ASCII"),
])
def test_bad_api_tokens_get_clear_errors_that_never_echo_the_token(value, message):
    with pytest.raises(ValueError, match=message) as caught:
        parse_api_token(value)
    assert "SECRET" not in str(caught.value)


def test_a_512_character_token_is_accepted():
    assert len(parse_api_token("a@b.c:" + "x" * 512).token) == 512


def test_bearer_and_oauth_validation():
    assert bearer_token("abc").key.startswith("bearer:")
    assert len(bearer_token("abc").key) == len("bearer:") + 16
    with pytest.raises(ValueError, match="bearer token is empty"):
        bearer_token("")
    with pytest.raises(ValueError, match="client secret"):
        oauth_credential(CLIENT_ID, "")
    with pytest.raises(ValueError, match="client id"):
        oauth_credential("has space", CLIENT_SECRET)
    with pytest.raises(ValueError, match="token URL"):
        oauth_credential(CLIENT_ID, CLIENT_SECRET, token_url="ftp://x")
    assert oauth_credential(CLIENT_ID, CLIENT_SECRET).key == f"oauth:{CLIENT_ID}"


def test_credentials_are_stored_encrypted_and_load_back(store, sessions):
    api_id = store.add(ApiToken(EMAIL, TOKEN))
    oauth_id = store.add(oauth_credential(CLIENT_ID, CLIENT_SECRET, refresh_token="rt-secret-1",
                                          access_token="at-secret-1", expires_at=123.0))
    bearer_id = store.add(BearerToken("bearer-secret-1"))
    with sessions() as session:
        rows = {r.id: r for r in session.scalars(select(Credential))}
    assert {r.kind for r in rows.values()} == {"api_token", "oauth", "bearer"}
    assert rows[api_id].key == "api_token:dev@example.com"
    assert rows[oauth_id].key == f"oauth:{CLIENT_ID}"
    for row in rows.values():
        for secret in (TOKEN, CLIENT_SECRET, "rt-secret-1", "at-secret-1", "bearer-secret-1"):
            assert secret.encode() not in row.secret
    assert store.load(api_id).secret == ApiToken(EMAIL, TOKEN)
    loaded = store.load(oauth_id)
    assert loaded.kind == "oauth" and loaded.key == f"oauth:{CLIENT_ID}"
    assert loaded.secret.refresh_token == "rt-secret-1" and loaded.secret.expires_at == 123.0
    assert store.load(bearer_id).secret.token == "bearer-secret-1"


def test_update_and_delete(store):
    cred_id = store.add(ApiToken(EMAIL, TOKEN))
    store.update(cred_id, ApiToken("other@example.com", "new-token"))
    assert store.load(cred_id).key == "api_token:other@example.com"
    store.delete(cred_id)
    with pytest.raises(CredentialNotFound):
        store.load(cred_id)


def test_no_repr_shows_a_secret(store, sessions):
    oauth = OAuthCredential(CLIENT_ID, CLIENT_SECRET, access_token="at-secret-2",
                            refresh_token="rt-secret-2", expires_at=9e9)
    api = ApiToken(EMAIL, TOKEN)
    bearer = BearerToken("bearer-secret-2")
    oauth_id = store.add(oauth)
    with sessions() as session:
        row = session.get(Credential, oauth_id)
        shown = [repr(row), str(row)]
    shown += [repr(x) for x in (oauth, api, bearer, store.load(oauth_id), store,
                                ApiTokenAuth(api), BearerAuth(bearer), OAuthAuth(store, oauth_id))]
    text = "\n".join(shown)
    for secret in (CLIENT_SECRET, "at-secret-2", "rt-secret-2", TOKEN, "bearer-secret-2"):
        assert secret not in text
    assert CLIENT_ID in text and EMAIL in text      # the non-secret parts are shown
