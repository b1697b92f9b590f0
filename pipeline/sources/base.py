"""What every frame source is: the `Source` interface, what it hands over (`Captured`), what
it says about itself (`SourceInfo`, `SourceState`), and its error."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from orstream.common.errors import OrstreamError


class SourceError(OrstreamError, RuntimeError):
    """A source that cannot be opened or read; names the source and the fix."""


class SourceLost(SourceError):
    """A live source that stayed down past source.reconnect_max_s: the run it fed ends
    with exit status 1 (it ran, then lost its input), not 2 (it could not start)."""

    exit_code = 1


@dataclass
class SourceInfo:
    name: str
    live: bool  # produces frames on its own clock: the capture edge keeps only the newest
    fps: float  # nominal rate (a file's average); pacing itself follows timestamps
    width: int
    height: int
    # Burns the timecode in when source.timecode is auto: a test feed, whose pixels nobody
    # needs untouched (pipeline/timecode.py)
    timecode: bool = False


@dataclass(frozen=True)
class Captured:
    """One frame as a source hands it over."""

    index: int  # position in the source's sequence; a gap is a frame never delivered
    image: np.ndarray  # (H, W, 3) uint8 RGB
    # When the frame was acquired (monotonic ns): the synthetic render's start, a paced
    # replay's release time. None: the moment the pipeline takes it (lossless replay, where
    # queueing ahead of a busy model is not latency anyone sees).
    t_capture_ns: int | None = None
    media_s: float | None = None  # files: presentation time from the recording's start


@dataclass(frozen=True)
class SourceState:
    """Whether a source is delivering; replaced whole, so readers on other threads (the
    runner's status line) always see one consistent value."""

    up: bool = True
    attempt: int = 0  # failed reconnect attempts in the current outage
    reconnects: int = 0  # outages recovered from since the start
    error: str | None = None  # why it is down
    down_since: float | None = None  # monotonic seconds
    # Outages recovered from, in total: from the last frame before each to the first after
    # (what a display went without), and the frames the source would have given meanwhile
    # at its nominal rate (a stream that comes back starts afresh: its own counters cannot
    # say what was missed).
    outage_s: float = 0.0
    missed: int = 0

    def describe(self) -> str:
        if self.up:
            return "source up"
        down_s = time.monotonic() - self.down_since if self.down_since is not None else 0.0
        return (f"source down (reconnecting, attempt {self.attempt + 1}, down {down_s:.0f} s):"
                f" {self.error}")


class Source:
    """Yields frames until the end or until `stop` is set; waits only on `stop`."""

    info: SourceInfo
    state: SourceState = SourceState()  # sources that cannot drop out are always up

    def prepare(self) -> None:
        """Set-up that can run while the stages open (the runner calls it from the capture
        thread before capture starts); `frames` calls it too. Default: nothing."""

    def frames(self, stop: threading.Event) -> Iterator[Captured]:
        raise NotImplementedError

    def close(self) -> None:
        """Release what `frames` does not release itself; safe to call twice."""
