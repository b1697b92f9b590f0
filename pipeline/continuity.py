"""Where a display is in a publisher's frame sequence, across the publisher's restarts.

seq counts from 0 in every run of a publisher's capture (`orstream run`), so a display that
outlives the publisher meets seq from 0 again when it is started again; within one run seq
only rises (PROTOCOL.md, "Publisher restarts"). Every frame names its run (`run`: the
capture's start, wall-clock ns), so a display that reconnects late, when the new run's seq
is already past the old run's last, still knows it for a new run and not for a gap.

Without `run` (a publisher that does not send it), a frame whose seq is not above the last
one seen is told apart by its capture time: the first of a new run when it was captured
*after* the last frame seen (t_wall_ns later), else stale (a duplicate, or overtaken by its
successors). The wall clock, because it is the clock two runs on two hosts share (a standby
publisher taking over).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

StepKind = Literal["first", "next", "gap", "restart", "stale"]


@dataclass(frozen=True)
class Step:
    kind: StepKind
    missing: int = 0  # gap: frames between the last seq and this one, never received


class SeqTracker:
    """Classifies each frame of each stream against the last one accepted on it."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[int, int, int | None]] = {}  # stream -> seq, wall, run
        self.restarts = 0  # publisher runs that began after the first one seen
        self.stale = 0  # duplicates, overtaken frames, frames of an older run
        self.missing = 0  # frames skipped over within a run (seq gaps)

    def step(self, stream: str, seq: int, t_wall_ns: int, run: int | None = None) -> Step:
        """Where this frame stands on `stream`. A stale frame is not remembered, so a late
        duplicate cannot make the next frame look like a gap."""
        last = self._last.get(stream)
        if last is None:
            step = Step("first")
        elif run is not None and last[2] is not None and run != last[2]:
            if run < last[2]:  # runs are start times: this one began before the last seen
                self.stale += 1
                return Step("stale")
            step = Step("restart")
            self.restarts += 1
        elif seq > last[0]:
            missing = seq - last[0] - 1
            step = Step("gap", missing) if missing else Step("next")
            self.missing += missing
        elif t_wall_ns > last[1] and (run is None or last[2] is None):
            step = Step("restart")
            self.restarts += 1
        else:
            self.stale += 1
            return Step("stale")
        self._last[stream] = (seq, t_wall_ns, run)
        return step
