"""Webhook signatures: `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the raw body>`."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from tests.conftest import load_fixture
from webhooks.signatures import sign, verify

SECRET = "It's a Secret to Everybody"
BODY = b"Hello, World!"
# The vector GitHub publishes for the same scheme; checked against hmac below as well.
KNOWN = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"


def hmac_header(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def test_sign_matches_a_known_vector():
    assert hmac_header(SECRET, BODY) == KNOWN
    assert sign(SECRET, BODY) == KNOWN


def test_sign_matches_hmac_over_a_captured_body():
    body = load_fixture("zulip__issue_updated")
    assert sign("s3cret", body) == hmac_header("s3cret", body)


def test_sign_encodes_a_non_ascii_secret_as_utf8():
    assert sign("clé", BODY) == hmac_header("clé", BODY)


def test_valid_signature_verifies():
    assert verify(KNOWN, BODY, [SECRET])


def test_wrong_secret_fails():
    assert not verify(KNOWN, BODY, ["not the secret"])


def test_no_secrets_fails():
    assert not verify(KNOWN, BODY, [])


@pytest.mark.parametrize("header", [None, "", "sha256=", "sha256", "garbage", "sha256=zzzz",
                                    KNOWN[:-1], KNOWN + "0", " " + KNOWN, KNOWN + "\n"])
def test_missing_or_garbage_header_fails(header):
    assert not verify(header, BODY, [SECRET])


def test_uppercase_hex_is_not_accepted():
    assert not verify("sha256=" + KNOWN[len("sha256="):].upper(), BODY, [SECRET])


def test_uppercase_prefix_is_not_accepted():
    assert not verify("SHA256=" + KNOWN[len("sha256="):], BODY, [SECRET])


def test_sha1_signature_is_not_accepted_even_when_correct():
    sha1 = "sha1=" + hmac.new(SECRET.encode(), BODY, hashlib.sha1).hexdigest()
    assert not verify(sha1, BODY, [SECRET])


def test_bare_hex_without_prefix_is_not_accepted():
    assert not verify(KNOWN[len("sha256="):], BODY, [SECRET])


def test_any_of_several_secrets_verifies_during_rotation():
    old, new = "old-secret", "new-secret"
    both = [old, new]
    assert verify(sign(old, BODY), BODY, both)
    assert verify(sign(new, BODY), BODY, both)
    assert not verify(sign(old, BODY), BODY, [new])  # after rotation the old one is dead


def test_secrets_may_be_any_iterable():
    assert verify(KNOWN, BODY, (s for s in ["other", SECRET]))


def test_body_with_one_byte_changed_fails():
    body = bytearray(load_fixture("kanboard__bitbucket_issue_closed"))
    header = sign("s3cret", bytes(body))
    body[len(body) // 2] ^= 0x01
    assert not verify(header, bytes(body), ["s3cret"])


def test_body_with_one_byte_appended_fails():
    assert not verify(KNOWN, BODY + b" ", [SECRET])


@pytest.mark.parametrize("header", ["sha256=é" + "0" * 63, "sha256=" + "\u0660" * 64,
                                    "sha256=\udcff" + "0" * 63])
def test_non_ascii_header_fails_without_an_error(header):
    assert not verify(header, BODY, [SECRET])


def test_signature_is_over_raw_bytes_not_reparsed_json():
    raw = b'{"a": 1}'
    assert not verify(sign(SECRET, raw), b'{"a":1}', [SECRET])
