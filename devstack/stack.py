"""Start a running system from real processes: web (gunicorn), worker (celery), simulator.

Used by the demo, the integration tests and the benchmarks, so that all three exercise the same
processes a Procfile runs in production.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx2

GUNICORN_CONFIG = Path(__file__).resolve().parent.parent / "config" / "gunicorn.conf.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx2.get(url, timeout=1.0).status_code < 500:
                return
        except httpx2.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


def _bin(name: str) -> str:
    """An executable installed beside the running Python (the venv's bin/)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class Stack:
    """Processes sharing one environment (database, broker, var dir)."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    _logs: list[IO] = field(default_factory=list)

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")
        self._logs.append(log)
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        self.procs[name] = proc
        return proc

    def run(self, *args: str, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a `bbsync` command in this stack's environment (plus `env`: a secret a user
        would export rather than type)."""
        return subprocess.run([_bin("bbsync"), *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, check=check, timeout=120)

    def start_web(self, port: int | None = None, workers: int | None = None, threads: int | None = None,
                  app: str = "webhooks:create_app()", chdir: str | None = None) -> str:
        """gunicorn with the production settings (config/gunicorn.conf.py: gevent workers on
        PostgreSQL, threads on SQLite), fewer processes or threads if asked."""
        port = port or free_port()
        sizes = [*(["--workers", str(workers)] if workers else []),
                 *(["--threads", str(threads)] if threads else []),
                 *(["--chdir", chdir] if chdir else [])]
        proc = self._spawn(f"web-{port}", [
            _bin("gunicorn"), "--config", str(GUNICORN_CONFIG), "--bind", f"127.0.0.1:{port}",
            "--graceful-timeout", "5", *sizes, app])
        url = f"http://127.0.0.1:{port}"
        wait_http(url + "/healthz", proc=proc)
        return url

    def start_worker(self, name: str = "worker", concurrency: int = 1, pool: str = "solo") -> subprocess.Popen:
        proc = self._spawn(name, [
            _bin("celery"), "-A", "worker.queue.celery_app", "worker", "--loglevel=INFO",
            f"--pool={pool}", f"--concurrency={concurrency}", "--hostname", f"{name}@%h",
            "--without-gossip", "--without-mingle", "--without-heartbeat"])
        self._wait_log(name, "ready.", proc)
        return proc

    def _wait_log(self, name: str, needle: str, proc: subprocess.Popen, timeout: float = 60.0) -> None:
        path = self.log_dir / f"{name}.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{path.read_text()[-3000:]}")
            if needle in path.read_text(errors="replace"):
                return
            time.sleep(0.1)
        raise TimeoutError(f"{name} did not log {needle!r} within {timeout:.0f} s")

    def stop(self, name: str, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        for name in list(self.procs):
            self.stop(name)
        for log in self._logs:
            log.close()
