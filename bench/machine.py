"""What the whole machine spent, for benchmarks that share it with their own load generator."""
from __future__ import annotations

import os


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, all cores (Linux /proc/stat):
    every process of the pipeline (web, workers, PostgreSQL, Redis, this sender) counts."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    tick = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields) - idle) / tick, sum(fields) / tick


def _proc_stats():
    """(command name, fields after it) of every live process (Linux /proc/PID/stat)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        yield raw[raw.index("(") + 1:raw.rindex(")")], raw[raw.rindex(")") + 2:].split()


def cpu_by_program() -> dict[str, float]:
    """CPU seconds used so far by the live processes of each program (Linux /proc): where a
    run's CPU went, as differences of two readings. Processes that start and end between the
    readings (a load generator) are not in it: they are the machine's total less the rest."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for name, fields in _proc_stats():
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return out


def group_cpu(pgid: int) -> float:
    """CPU seconds (user + system) used so far by process group `pgid`: its live processes
    (a celery worker started in a session of its own, with its pool's children) and the
    children they reaped. Differences of two readings are what the group spent between them."""
    tick = os.sysconf("SC_CLK_TCK")
    total = sum(sum(int(x) for x in fields[11:15])  # pgrp is fields[2]; utime..cstime at 11-14
                for _name, fields in _proc_stats() if int(fields[2]) == pgid)
    return total / tick
