"""Timing calls and summarising the milliseconds: shared by the benchmarks and the INT8 gate."""

from __future__ import annotations

import math
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


class LatencyHistogram:
    """Milliseconds of a run of any length in constant memory (34 KB), for displays that run
    for days: a list of floats grows 3.5 MB an hour at 30 fps.

    Log-spaced bins 1 % wide from 1 us to 1000 s, one set for values >= 0 and one mirrored for
    negative ones (a display on another host whose clock runs ahead), a bin for |v| < 1 us,
    and exact count, sum, min and max. A percentile is its bin's geometric middle, clamped to
    [min, max]: within 0.5 % of the exact value.
    """

    _LOW_MS = 1e-3
    _STEP = 1.01
    _LOG_STEP = math.log(_STEP)
    _BINS = math.ceil(math.log(1e6 / 1e-3) / _LOG_STEP) + 1  # the last one: >= 1000 s

    def __init__(self) -> None:
        self._pos = np.zeros(self._BINS, np.int64)
        self._neg = np.zeros(self._BINS, np.int64)
        self._zero = 0
        self.count = 0
        self._sum = 0.0
        self.min = float("inf")
        self.max = float("-inf")

    def add(self, ms: float) -> None:
        ms = float(ms)
        if not math.isfinite(ms):
            return
        self.count += 1
        self._sum += ms
        self.min = min(self.min, ms)
        self.max = max(self.max, ms)
        size = abs(ms)
        if size < self._LOW_MS:
            self._zero += 1
            return
        i = min(int(math.log(size / self._LOW_MS) / self._LOG_STEP), self._BINS - 1)
        (self._pos if ms > 0 else self._neg)[i] += 1

    def __len__(self) -> int:
        return self.count

    def percentile(self, p: float) -> float | None:
        if not self.count:
            return None
        middles = self._LOW_MS * self._STEP ** (np.arange(self._BINS) + 0.5)
        counts = np.concatenate([self._neg[::-1], [self._zero], self._pos])
        values = np.concatenate([-middles[::-1], [0.0], middles])
        rank = p / 100 * (self.count - 1)  # as numpy's percentile, to the bin
        i = int(np.searchsorted(np.cumsum(counts), rank, side="right"))
        return float(min(max(values[min(i, len(values) - 1)], self.min), self.max))

    def stats(self) -> dict:
        """As `stats` of the samples: n, p50, p95, p99, max, mean (None each when empty)."""
        if not self.count:
            return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
        return {"n": self.count, "p50": self.percentile(50), "p95": self.percentile(95),
                "p99": self.percentile(99), "max": self.max, "mean": self._sum / self.count}
