"""One typed settings object, read from the environment once.

Nothing here opens a connection: the object only holds strings and numbers, and the code that
needs a database or a broker builds it from them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: Bitbucket drops payloads over 256 KB; anything near 1 MiB is not Bitbucket talking to us.
DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class SettingsError(ValueError):
    """A setting is present but unusable; the message names it."""


@dataclass(frozen=True)
class Settings:
    var_dir: Path
    database_url: str
    broker_url: str
    port: int
    max_body_bytes: int
    secret_keys: tuple[str, ...]  # Fernet keys, newest first; empty means "use the key file"
    queue: str
    # Redis hands an unacknowledged task to another worker after this long (a worker died).
    # Every countdown and retry delay is kept well below it.
    visibility_timeout: int = 1800
    # Proxies in front of the web process that set X-Forwarded-For/-Proto (a TLS terminator):
    # only that many hops are trusted for the client's address (throttling, logs).
    trusted_proxies: int = 0
    # Bodies of processed deliveries are pruned after this many days (beat); rows stay.
    delivery_retention_days: int = 30

    @property
    def embedded_broker(self) -> bool:
        return self.broker_url.startswith("filesystem://")

    @property
    def broker_folder(self) -> Path:
        return self.var_dir / "broker"

    @property
    def key_file(self) -> Path:
        return self.var_dir / "secret.key"


def _database_url(raw: str | None, var_dir: Path) -> str:
    if not raw:
        return f"sqlite:///{var_dir / 'bbsync.db'}"
    # Heroku-style URLs name no driver; we ship psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix):]
    return raw


def _int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a whole number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name} must be positive, got {value}")
    return value


def load(env: dict[str, str] | None = None) -> Settings:
    """Build settings from an environment mapping (os.environ by default)."""
    env = dict(os.environ if env is None else env)
    var_dir = Path(env.get("BBSYNC_VAR_DIR") or "var").resolve()
    broker = env.get("BROKER_URL") or env.get("REDIS_URL") or "filesystem://"
    keys = tuple(k.strip() for k in env.get("BBSYNC_SECRET_KEYS", "").split(",") if k.strip())
    return Settings(
        var_dir=var_dir,
        database_url=_database_url(env.get("DATABASE_URL"), var_dir),
        broker_url=broker,
        port=_int(env, "PORT", 8000),
        max_body_bytes=_int(env, "BBSYNC_MAX_BODY_BYTES", DEFAULT_MAX_BODY_BYTES),
        secret_keys=keys,
        queue=env.get("BBSYNC_QUEUE") or "bbsync",
        visibility_timeout=_int(env, "BBSYNC_VISIBILITY_TIMEOUT", 1800),
        trusted_proxies=_proxies(env.get("BBSYNC_TRUSTED_PROXIES")),
        delivery_retention_days=_int(env, "BBSYNC_DELIVERY_RETENTION_DAYS", 30),
    )


def _proxies(raw: str | None) -> int:
    if raw in (None, ""):
        return 0
    if not raw.isdigit() or int(raw) > 5:
        raise SettingsError(f"BBSYNC_TRUSTED_PROXIES must be a whole number from 0 to 5, got {raw!r}")
    return int(raw)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read on first use (never at import time)."""
    return load()
