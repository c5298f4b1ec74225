"""Settings read from an environment mapping, once, without touching anything."""
from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import DEFAULT_MAX_BODY_BYTES, SettingsError, load


def test_defaults_are_sqlite_under_var_and_the_embedded_broker(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load({})
    assert s.var_dir == tmp_path.resolve() / "var"
    assert s.database_url == f"sqlite:///{tmp_path.resolve() / 'var' / 'bbsync.db'}"
    assert s.broker_url == "filesystem://"
    assert s.embedded_broker
    assert s.broker_folder == s.var_dir / "broker"
    assert s.key_file == s.var_dir / "secret.key"
    assert s.port == 8000
    assert s.max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert s.secret_keys == ()
    assert s.queue == "bbsync"


def test_loading_settings_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    load({})
    assert list(tmp_path.iterdir()) == []


def test_var_dir_moves_the_database_with_it(tmp_path):
    s = load({"BBSYNC_VAR_DIR": str(tmp_path / "state")})
    assert s.var_dir == tmp_path / "state"
    assert s.database_url == f"sqlite:///{tmp_path / 'state' / 'bbsync.db'}"


def test_empty_values_mean_the_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = load({"DATABASE_URL": "", "BROKER_URL": "", "REDIS_URL": "", "PORT": "",
              "BBSYNC_QUEUE": "", "BBSYNC_VAR_DIR": ""})
    assert s.database_url.startswith("sqlite:///")
    assert s.broker_url == "filesystem://" and s.port == 8000 and s.queue == "bbsync"
    assert s.var_dir == Path("var").resolve()


@pytest.mark.parametrize("url", ["postgres://u:p@db:5432/app", "postgresql://u:p@db:5432/app"])
def test_driverless_postgres_urls_get_the_psycopg_driver(url):
    assert load({"DATABASE_URL": url}).database_url == "postgresql+psycopg://u:p@db:5432/app"


def test_postgres_url_naming_its_driver_is_kept():
    url = "postgresql+psycopg://u:p@db/app"
    assert load({"DATABASE_URL": url}).database_url == url


def test_redis_url_is_the_broker_when_no_broker_url():
    s = load({"REDIS_URL": "redis://cache:6379/0"})
    assert s.broker_url == "redis://cache:6379/0"
    assert not s.embedded_broker


def test_broker_url_wins_over_redis_url():
    s = load({"REDIS_URL": "redis://cache:6379/0", "BROKER_URL": "redis://queue:6379/1"})
    assert s.broker_url == "redis://queue:6379/1"


def test_port_is_read_as_a_number():
    assert load({"PORT": "5055"}).port == 5055


@pytest.mark.parametrize("value", ["eighty", "80.5", "0x50", "8o8o"])
def test_port_that_is_not_a_number_fails_naming_port(value):
    with pytest.raises(SettingsError, match="PORT") as err:
        load({"PORT": value})
    assert repr(value) in str(err.value)


@pytest.mark.parametrize("value", ["0", "-1"])
def test_port_that_is_not_positive_fails_naming_port(value):
    with pytest.raises(SettingsError, match="PORT must be positive"):
        load({"PORT": value})


def test_bad_body_limit_fails_naming_it():
    with pytest.raises(SettingsError, match="BBSYNC_MAX_BODY_BYTES"):
        load({"BBSYNC_MAX_BODY_BYTES": "1MB"})


def test_secret_keys_are_split_trimmed_and_kept_in_order():
    s = load({"BBSYNC_SECRET_KEYS": " new-key , old-key,, "})
    assert s.secret_keys == ("new-key", "old-key")


def test_queue_name_is_configurable():
    assert load({"BBSYNC_QUEUE": "bbsync-eu"}).queue == "bbsync-eu"


def test_settings_are_frozen():
    s = load({})
    with pytest.raises(AttributeError):
        s.port = 1  # type: ignore[misc]


@pytest.mark.parametrize("raw, expected", [("", 0), ("0", 0), ("1", 1), ("5", 5)])
def test_trusted_proxies_default_to_none(raw, expected):
    assert load({"BBSYNC_TRUSTED_PROXIES": raw}).trusted_proxies == expected


@pytest.mark.parametrize("raw", ["-1", "6", "one", "1.5", " 1", "\x001"])
def test_trusted_proxies_outside_0_to_5_are_refused(raw):
    with pytest.raises(SettingsError, match="BBSYNC_TRUSTED_PROXIES"):
        load({"BBSYNC_TRUSTED_PROXIES": raw})
