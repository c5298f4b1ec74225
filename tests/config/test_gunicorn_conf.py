"""The web process's gunicorn settings (config/gunicorn.conf.py) and the Procfile line that uses
them: gevent on PostgreSQL, threads on SQLite (whose driver would stall every greenlet)."""
from __future__ import annotations

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CONF = ROOT / "config" / "gunicorn.conf.py"


def settings(monkeypatch, **env) -> dict:
    for name in ("DATABASE_URL", "WEB_CONCURRENCY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return runpy.run_path(str(CONF))


def test_postgresql_runs_gevent_workers(monkeypatch):
    conf = settings(monkeypatch, DATABASE_URL="postgresql://bbsync@db/bbsync")
    assert conf["worker_class"] == "gevent"
    assert conf["workers"] == 2


def test_a_gevent_process_never_has_more_requests_in_flight_than_database_connections(monkeypatch):
    from worker.db.session import make_engine
    conf = settings(monkeypatch, DATABASE_URL="postgresql://bbsync@db/bbsync")
    pool = make_engine("postgresql://bbsync@db/bbsync").pool  # builds the pool; connects to nothing
    assert 16 <= conf["worker_connections"] <= pool.size() + pool._max_overflow


@pytest.mark.parametrize("url", [None, "sqlite:///var/bbsync.db"])
def test_sqlite_runs_threads(monkeypatch, url):
    conf = settings(monkeypatch, **({"DATABASE_URL": url} if url else {}))
    assert conf["worker_class"] == "gthread"
    assert conf["threads"] == 8


def test_web_concurrency_sets_the_processes(monkeypatch):
    assert settings(monkeypatch, WEB_CONCURRENCY="5")["workers"] == 5


def test_gevent_is_installed_with_the_project():
    import gevent  # noqa: F401 - `pip install -e .` must bring what the Procfile's web: runs


def test_procfile_web_uses_the_config_and_binds_port():
    web = next(line for line in (ROOT / "Procfile").read_text().splitlines() if line.startswith("web:"))
    assert "--config config/gunicorn.conf.py" in web
    assert re.search(r"--bind \S*:\$PORT", web)
    assert '"webhooks:create_app()"' in web


def test_each_worker_freezes_what_loading_the_app_made(monkeypatch):
    import gc

    from gunicorn.config import Config
    conf = settings(monkeypatch, DATABASE_URL="postgresql://bbsync@db/bbsync")
    assert "post_worker_init" in Config().settings  # a hook gunicorn calls by this name
    before = gc.get_freeze_count()
    try:
        conf["post_worker_init"](worker=None)
        assert gc.get_freeze_count() > before
    finally:
        gc.unfreeze()
