"""Put frames from several segment workers back in capture order, without stalling.

Workers finish frames out of order. Each frame carries `prev_seq`, the seq that capture sent
before it, so the frame that comes next is known exactly even where live capture skipped
seqs: a gap in seq is never waited for, only a frame that was sent and has not come back.
A frame that is still missing `window_ms` after its successor arrived is given up (its
successors go on, the loss is counted); if it turns up later it is dropped as late, since a
display must never step back in time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from orstream.pipeline.frame import Frame
from orstream.pipeline.transport import Receiver


@dataclass
class ReorderStats:
    reordered: int = 0  # frames that arrived early and were held for their predecessor
    given_up: int = 0  # predecessors not waited for any longer (window expired)
    late: int = 0  # frames that arrived after their successors were shown: dropped


class Reorder:
    """The ordering itself, separate from sockets so that it can be tested on its own.

    `push(frame, now_ns)` then `pop(now_ns)` until None; `next_deadline_ns` says when a
    held frame will be released even if its predecessor never comes. Held frames are few
    (about one per worker), so plain scans beat any indexed structure here.
    """

    def __init__(self, window_ms: float) -> None:
        assert window_ms > 0, "a reorder window must be positive"
        self.window_ns = int(window_ms * 1e6)
        self.stats = ReorderStats()
        self._last: dict[str, int] = {}  # stream -> the last seq released
        self._held: list[tuple[int, Frame]] = []  # (release deadline, frame)

    def _ready(self, frame: Frame) -> bool:
        last = self._last.get(frame.stream)
        # The first frame of a stream, or the one capture sent right after the last shown.
        return last is None or frame.prev_seq is None or frame.prev_seq <= last

    def push(self, frame: Frame, now_ns: int) -> None:
        last = self._last.get(frame.stream)
        if last is not None and frame.seq <= last:
            self.stats.late += 1
            return
        if not self._ready(frame):
            self.stats.reordered += 1
        self._held.append((now_ns + self.window_ns, frame))

    def pop(self, now_ns: int) -> Frame | None:
        """The next frame to show, or None while the one due next is still on its way."""
        heads: dict[str, tuple[int, Frame]] = {}  # stream -> its held frame of lowest seq
        expired: dict[str, bool] = {}  # stream -> some frame of it has waited the window
        for deadline, frame in self._held:
            head = heads.get(frame.stream)
            if head is None or frame.seq < head[1].seq:
                heads[frame.stream] = (deadline, frame)
            expired[frame.stream] = expired.get(frame.stream, False) or deadline <= now_ns
        # Streams (operating rooms) share the render: the oldest capture goes first.
        for item in sorted(heads.values(), key=lambda it: it[1].t_capture_ns):
            frame = item[1]
            if not self._ready(frame):
                if not expired[frame.stream]:
                    continue
                self.stats.given_up += 1  # its predecessor took too long: go on without it
            self._held.remove(item)
            self._last[frame.stream] = frame.seq
            return frame
        return None

    def next_deadline_ns(self) -> int | None:
        return min(deadline for deadline, _ in self._held) if self._held else None


class ReorderingReceiver:
    """A Receiver whose `recv` returns frames in capture order (see module docstring)."""

    def __init__(self, inner: Receiver, window_ms: float) -> None:
        self.inner = inner
        self.reorder = Reorder(window_ms)

    @property
    def stats(self):  # the runner sums rejections over every input
        return self.inner.stats

    @property
    def dropped(self) -> int:
        return self.inner.dropped + self.reorder.stats.late

    def recv(self, timeout_ms: int = 100) -> Frame | None:
        deadline = time.monotonic_ns() + timeout_ms * 1_000_000
        while True:
            now = time.monotonic_ns()
            frame = self.reorder.pop(now)
            if frame is not None:
                return frame
            if now >= deadline:
                return None
            wait_until = deadline
            held = self.reorder.next_deadline_ns()
            if held is not None:
                wait_until = min(wait_until, held)
            arrived = self.inner.recv(max(0, (wait_until - now) // 1_000_000))
            if arrived is not None:
                self.reorder.push(arrived, time.monotonic_ns())

    def close(self) -> None:
        self.inner.close()
