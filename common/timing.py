"""Timing calls and summarising the milliseconds: shared by the benchmarks and the INT8 gate."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np


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
    """n, p50, p95, p99, max and mean of a set of milliseconds."""
    return {
        "n": int(len(ms)),
        "p50": float(np.percentile(ms, 50)),
        "p95": float(np.percentile(ms, 95)),
        "p99": float(np.percentile(ms, 99)),
        "max": float(ms.max()),
        "mean": float(ms.mean()),
    }
