"""Where a pipeline's CPU went, per process kind: its web (gunicorn) and celery process groups,
the PostgreSQL backends serving its database, Redis, and this process (the senders and the
polling). What the machine spent beyond those is "other" (PostgreSQL's background writers,
the WAL writer, the kernel's threads, anything else running on the machine).

Readings from /proc (utime + stime, and cutime + cstime for process groups, whose reaped
children count); differences of two readings are what each spent between them.
"""
from __future__ import annotations

import os
import resource

import psycopg

from bench.machine import _proc_stats, group_cpu


def _tick() -> float:
    return float(os.sysconf("SC_CLK_TCK"))


def _pids_cpu(pids: set[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])
    return total / _tick()


def backend_pids(pg_url: str, db_name: str) -> set[int]:
    """The PostgreSQL backends connected to `db_name` now (pools keep theirs for the run)."""
    with psycopg.connect(pg_url, autocommit=True) as c:
        return {pid for pid, in c.execute("select pid from pg_stat_activity where datname = %s",
                                          (db_name,))}


def reading(web_pgid: int, celery_pgid: int, backends: set[int]) -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF)
    redis_cpu = sum((int(f[11]) + int(f[12])) / _tick() for name, f in _proc_stats()
                    if name.startswith("redis-server"))
    return {"web": group_cpu(web_pgid), "celery": group_cpu(celery_pgid),
            "celery_main": _pids_cpu({celery_pgid}),
            "postgres": _pids_cpu(backends), "redis": redis_cpu,
            "senders": own.ru_utime + own.ru_stime}


def per_event(before: dict[str, float], after: dict[str, float], machine_ms: float, n: int) -> dict[str, float]:
    """ms of CPU per event for each kind, and "other": the machine's less the kinds'."""
    out = {k: 1000 * (after[k] - before[k]) / max(1, n) for k in before}
    out["other"] = machine_ms - sum(v for k, v in out.items() if k != "celery_main")
    return out
