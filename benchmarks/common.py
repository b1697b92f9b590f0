"""Shared pieces of the benchmarks: clocks, percentiles, machine description, table and JSON."""

from __future__ import annotations

import json
import platform
import socket
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def cpu_model() -> str:
    from orstream.engines.backends.base import cpu_name

    return cpu_name()


def machine() -> dict:
    import cv2
    import torch
    from orstream.engines.backends.base import cpu_isa

    return {
        "cpu": cpu_model(),
        "cpu_isa": " ".join(cpu_isa()),
        "cores": __import__("os").cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def time_calls(fn: Callable[[], object], iters: int, warmup: int,
               sync: Callable[[], None] | None = None, idle_s: float = 0.0) -> np.ndarray:
    """Milliseconds per call, after `warmup` unmeasured calls; `sync` runs before each clock read
    (torch.cuda.synchronize on a GPU, so the clock sees finished work). `idle_s` sleeps
    before each measured call, outside the clock: a live feed leaves the engine idle between
    frames, and waking an idle CPU is part of what a frame costs."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    out = np.empty(iters)
    for i in range(iters):
        if idle_s:
            time.sleep(idle_s)
        t0 = time.perf_counter_ns()
        fn()
        if sync:
            sync()
        out[i] = (time.perf_counter_ns() - t0) / 1e6
    return out


def stats(ms: np.ndarray) -> dict:
    return {
        "n": int(len(ms)),
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """Markdown table; columns are (key, header, format)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(format(r[k], f) if r.get(k) is not None else "-"
                              for k, _, f in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def write_json(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
