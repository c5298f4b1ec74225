"""Encryption of secrets at rest (webhook secrets, API tokens).

Fernet (AES-128-CBC + HMAC-SHA256). Keys come from BBSYNC_SECRET_KEYS (comma-separated, newest
first, so a key can be rotated: new data is encrypted with the first, old data still decrypts).
With no key configured, as on the embedded default, a key file is created under var/ with mode
0600 on first use.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from config.settings import Settings, get_settings


class SecretsUnreadable(RuntimeError):
    """A stored secret does not decrypt with any configured key."""


def _key_file_key(path: Path) -> str:
    if path.exists():
        return path.read_text(encoding="ascii").strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    key = Fernet.generate_key().decode("ascii")
    # O_EXCL: if two processes race to create it, one wins and the other reads the winner's key.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text(encoding="ascii").strip()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key)
    return key


def make_cipher(settings: Settings) -> MultiFernet:
    keys = settings.secret_keys or (_key_file_key(settings.key_file),)
    return MultiFernet([Fernet(k.encode("ascii")) for k in keys])


@lru_cache(maxsize=1)
def _cipher() -> MultiFernet:
    return make_cipher(get_settings())


def encrypt(plaintext: str) -> bytes:
    return _cipher().encrypt(plaintext.encode("utf-8"))


def decrypt(ciphertext: bytes) -> str:
    try:
        return _cipher().decrypt(bytes(ciphertext)).decode("utf-8")
    except InvalidToken:
        raise SecretsUnreadable("a stored secret does not decrypt with the configured keys "
                                "(BBSYNC_SECRET_KEYS)") from None
