"""Threaded capture: a source runs on its own thread and the pipeline takes what it holds.

The decoder (or camera, or synthetic renderer) must never wait for the model, and the
model must never wait for a decode it does not need. What sits between them depends on
the source:

- **live** sources (the synthetic endoscope, paced replay, network streams, cameras): a one-slot
  holder. A newer frame replaces one not yet taken, and the replacement is counted; the
  frame's `index` keeps counting, so downstream sees the gap and counts the drop too.
- **lossless** sources (lossless replay): a bounded FIFO. A full queue blocks the decoder
  (backpressure), so every frame is delivered once, in order, without unbounded memory.

All waits are Condition/Event waits: the producer wakes the consumer when a frame lands,
and `close()` wakes a producer blocked on a full queue or pacing towards its next frame.
"""

from __future__ import annotations

import ctypes
import platform
import threading
from collections import deque
from collections.abc import Iterator

from loguru import logger

from orstream.pipeline.sources import Captured, Source

LOSSLESS_DEPTH = 4  # frames decoded ahead in lossless mode: enough to hide decode jitter
# Longer than source.read_timeout_s's default (3 s), which bounds a blocked network or camera
# read: a decoder stuck past this is reported and left behind.
CLOSE_TIMEOUT_S = 5.0
# glibc mallopt settings for keep_frame_memory(): frames up to 4K RGB (25 MB) come from the
# heap, and up to 256 MB of freed frames stay in the process for the next ones.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 64 << 20
TRIM_THRESHOLD_BYTES = 256 << 20


def keep_frame_memory() -> bool:
    """Keep freed frame buffers in the process instead of handing them back to the kernel.

    Frames are allocated on the decode thread and freed on another (render, a sink), a few
    in flight at once. With glibc's defaults many freed 1080p frames (6 MB) go back to the
    kernel and the next ones fault their pages in again: 200-440 page faults and 0.3-0.6 ms
    of system time per frame, which kept lossless replay with segmentation off 12 % behind
    raw decode (benchmarks/replay.py); with these two settings the faults go and so does the
    gap. A display (`orstream view`, `orstream web`) gets a 6 MB message per frame from
    ZeroMQ's I/O thread and frees it on its own: with glibc's defaults its RSS moved up and
    down by one frame as the dynamic mmap threshold came and went (52 vs 58 MiB in the
    soak); with these settings it holds the few frames in flight from the start.
    Process-wide, so for entry points (the CLI, benchmarks) to call, not library code.
    Returns False, changing nothing, where the C library is not glibc.
    """
    if platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    ok = (libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
          and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
    logger.debug("allocator: glibc mmap threshold {} MiB, trim threshold {} MiB: {}",
                 MMAP_THRESHOLD_BYTES >> 20, TRIM_THRESHOLD_BYTES >> 20,
                 "set" if ok else "refused")
    return ok


class _Holder:
    """Frames from the capture thread to the pipeline: one replaced slot, or a bounded FIFO."""

    def __init__(self, capacity: int, replace: bool) -> None:
        self.capacity = 1 if replace else max(1, capacity)
        self.replace = replace
        self.overwritten = 0  # frames replaced before anyone took them (live only)
        self._items: deque[Captured] = deque()
        self._cond = threading.Condition()
        self._ended = False  # the producer has finished (end of stream, error or close)
        self._closed = False  # the consumer has gone: producers stop
        self._error: BaseException | None = None

    def put(self, item: Captured) -> bool:
        """Hand over a frame; False once the consumer has closed (the producer then stops)."""
        with self._cond:
            if self.replace:
                if self._items:
                    self._items.clear()
                    self.overwritten += 1
            else:
                self._cond.wait_for(lambda: self._closed or len(self._items) < self.capacity)
            if self._closed:
                return False
            self._items.append(item)
            self._cond.notify_all()
            return True

    def finish(self, error: BaseException | None = None) -> None:
        with self._cond:
            self._ended = True
            self._error = error
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._items.clear()
            self._cond.notify_all()

    def take(self, timeout_s: float) -> tuple[Captured | None, bool]:
        """(frame, ended): a frame if one came within the timeout; ended once the producer
        has finished and nothing is left. Re-raises the producer's error, if any."""
        with self._cond:
            self._cond.wait_for(lambda: self._items or self._ended or self._closed, timeout_s)
            if self._items:
                item = self._items.popleft()
                self._cond.notify_all()  # a lossless producer may be waiting for room
                return item, False
            if self._error is not None:
                raise self._error
            return None, self._ended or self._closed


class CaptureThread:
    """Runs `source.frames()` on its own thread; iterate `frames(stop)` to take them.

    Use as a context manager: leaving it closes the holder, wakes and stops the source, and
    joins the thread (with a timeout, so a stuck device cannot hang shutdown).
    """

    def __init__(self, source: Source, depth: int = LOSSLESS_DEPTH) -> None:
        self.source = source
        self._holder = _Holder(depth, replace=source.info.live)
        self._stop = threading.Event()  # the source's own stop: pacing waits wake on it
        self._thread = threading.Thread(target=self._run, name="orstream-decode", daemon=True)
        self.taken = 0

    @property
    def overwritten(self) -> int:
        """Frames the source produced that were replaced before the pipeline took them."""
        return self._holder.overwritten

    def start(self) -> CaptureThread:
        self._thread.start()
        return self

    def _run(self) -> None:
        error: BaseException | None = None
        frames = self.source.frames(self._stop)
        try:
            for item in frames:
                if not self._holder.put(item):
                    break
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, raised there
            error = exc
        finally:
            frames.close()  # the source's cleanup (closing its file) runs on this thread
            self._holder.finish(error)

    def frames(self, stop: threading.Event, wait_s: float = 0.1) -> Iterator[Captured]:
        """Frames as they come, until the source ends or `stop` is set. `wait_s` bounds how
        long a stop request set from outside (a signal, `--frames`) may go unnoticed."""
        while not stop.is_set():
            item, ended = self._holder.take(wait_s)
            if item is not None:
                self.taken += 1
                yield item
            elif ended:
                return

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the source and join its thread; safe to call twice."""
        self._stop.set()
        self._holder.close()
        if self._thread.is_alive():
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.warning("capture of {} did not stop within {:.0f} s; left behind",
                               self.source.info.name, timeout_s)

    def __enter__(self) -> CaptureThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
