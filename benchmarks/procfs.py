"""Readings of /proc (Linux) that benchmarks take of their own processes, never of the frame
path: CPU time, the process tree, command lines."""

from __future__ import annotations

import os
from pathlib import Path


def host_cpu_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def process_cpu_jiffies(pid: int) -> int:
    """User + system clock ticks of `pid` (all its threads); 0 once it is gone."""
    try:
        fields = _stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])


def thread_niceness(pid: int) -> list[int]:
    """The scheduling niceness (-20..19) of each thread of `pid`: Linux sets it per thread,
    and a program may change its threads' apart. Empty once it is gone."""
    return [int(_stat_fields(stat)[16]) for stat in _per_thread(pid, "stat")]


def children(pid: int) -> list[int]:
    """Direct children of `pid` (every thread's list: a child belongs to the thread that
    forked it)."""
    return sorted({int(p) for listed in _per_thread(pid, "children") for p in listed.split()})


def _per_thread(pid: int, name: str) -> list[str]:
    """/proc/PID/task/TID/`name` of each thread of `pid` still there; [] once it is gone."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    found = []
    for task in tasks:
        try:
            found.append(Path(f"/proc/{pid}/task/{task}/{name}").read_text())
        except OSError:
            continue  # the thread ended meanwhile
    return found


def _stat_fields(stat: str) -> list[str]:
    """A stat line's fields after "pid (comm) ": comm may hold spaces and parentheses."""
    return stat[stat.rindex(")") + 2:].split()


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, children first."""
    found, todo = [], children(pid)
    while todo:
        child = todo.pop(0)
        found.append(child)
        todo += children(child)
    return found
