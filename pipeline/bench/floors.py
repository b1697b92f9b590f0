"""Floors, measured in the same run as what they bound: how fast the hardware and the
simplest peer move or decode one frame, so a report says how far each stage is from them.

- memcpy of one frame (the floor of any hop);
- raw PyAV decode + RGB conversion of the same file (the floor of capture), when the
  source is a file;
- one imagezmq REQ/REP hop of the same frame between two processes over ipc (the
  simplest peer of the display hop), when imagezmq is installed (`.[bench]`);
- the machine's own jitter: one fixed few-millisecond CPU task at the frame rate, with the
  pipeline stopped. Its p99 over its p50 is the tail the host adds to any work (a VM's
  neighbours, frequency changes); a pipeline's p99 cannot be expected to beat it.

`orstream bench` adds them to its report; `python -m orstream.benchmarks.peers` prints them.
"""

from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from orstream.common.timing import stats, time_calls


def memcpy_floor(shape: tuple[int, int, int]) -> dict[str, Any]:
    src = np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8)
    dst = np.empty_like(src)
    return {"what": f"memcpy {shape[1]}x{shape[0]} frame", **stats(
        time_calls(lambda: np.copyto(dst, src), iters=200, warmup=10))}


def decode_floor(path: Path, limit: int = 300) -> dict[str, Any]:
    import time

    import av

    times = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # what lossless replay uses
        t0 = time.perf_counter_ns()
        for frame in container.decode(stream):
            frame.to_ndarray(format="rgb24")
            t1 = time.perf_counter_ns()
            times.append((t1 - t0) / 1e6)
            t0 = t1
            if len(times) >= limit:
                break
    ms = np.asarray(times)
    return {"what": f"PyAV decode + RGB of {path.name}", "fps": float(1000 / ms.mean()),
            **stats(ms)}


def imagezmq_floor(shape: tuple[int, int, int], frames: int = 90) -> dict[str, Any]:
    from orstream.pipeline.bench.hop import imagezmq_row

    with tempfile.TemporaryDirectory() as tmp:
        row = imagezmq_row(f"ipc://{tmp}/peer", shape, frames, 30.0, warmup=10)
    return {"what": "imagezmq REQ/REP hop over ipc (process to process)", **row}


# Single-threaded (numpy's sort), so the probe measures the host, not a thread pool's
# scheduling; about 2 ms on the 2-core CI box, a frame stage's order of magnitude.
_JITTER_ELEMENTS = 400_000
# A host that stretches a fixed task's p99 to three times its p50 with nothing else running
# adds that tail to every stage; a broken tail budget there says more about the host.
NOISY_HOST_RATIO = 3.0


def jitter_floor(fps: float = 30.0, seconds: float = 4.0) -> dict[str, Any]:
    """The same fixed task once per frame period: how much the host alone stretches it."""
    data = np.random.default_rng(0).random(_JITTER_ELEMENTS).astype(np.float32)
    iters = max(20, int(seconds * fps))
    ms = time_calls(lambda: np.sort(data), iters=iters, warmup=5, idle_s=1.0 / fps)
    figures = stats(ms)
    return {"what": f"machine jitter: a fixed single-thread task ({_JITTER_ELEMENTS:,}-float "
                    f"sort) at {fps:g} fps, nothing else running", **figures,
            "p99_over_p50": figures["p99"] / figures["p50"]}


def floors(spec: str, frame_hw: tuple[int, int], fps: float = 30.0) -> list[dict[str, Any]]:
    """Every floor that applies to this source; a floor that cannot run says why."""
    shape = (*frame_hw, 3)
    out = [memcpy_floor(shape), jitter_floor(fps)]
    path = Path(spec)
    if path.is_file():
        try:
            out.append(decode_floor(path))
        except Exception as exc:  # a floor must never sink the report it annotates
            out.append({"what": "PyAV decode", "skipped": f"{exc.__class__.__name__}: {exc}"})
    if importlib.util.find_spec("imagezmq") is not None:
        try:
            out.append(imagezmq_floor(shape))
        except Exception as exc:
            out.append({"what": "imagezmq hop", "skipped": f"{exc.__class__.__name__}: {exc}"})
    else:
        out.append({"what": "imagezmq hop",
                    "skipped": "imagezmq not installed: pip install -e '.[bench]'"})
    return out
