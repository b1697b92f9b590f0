"""The Frame: one picture and what is known about it, as it moves through the pipeline.

Latency is read off the trace and nothing else times the pipeline: each stage appends
(stage, t_in, t_out) in monotonic nanoseconds, so per-stage and end-to-end figures come from
the same clock on one host.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Caption:
    text: str
    seq: int  # the frame the caption describes
    t_capture_ns: int  # that frame's capture time (monotonic), to show the caption's age


@dataclass(eq=False)
class Frame:
    stream: str  # stream id, e.g. an operating room
    seq: int  # monotonic per stream, from 0
    t_capture_ns: int  # time.monotonic_ns() at capture: latency is measured against it
    t_wall_ns: int  # time.time_ns() at capture: for humans and across hosts
    image: np.ndarray  # (H, W, 3) uint8 RGB, the camera's picture
    labels: np.ndarray | None = None  # (h, w) uint8 class ids over `region` of the image
    region: tuple[int, int, int, int] | None = None  # (y, x, h, w) the labels cover
    overlay: np.ndarray | None = None  # (H, W, 3) uint8 RGB, what displays show
    caption: Caption | None = None
    # The class table of `labels` ({"task", "names", "colors"}, PROTOCOL.md) when it is the
    # frame's own: TP-SIS's prompts, which can change while the pipeline runs. None: the
    # model's fixed table, which the publishers know.
    classes: dict[str, Any] | None = None
    media_s: float | None = None  # recorded sources: presentation time in the recording
    # The seq of the frame sent before this one on the capture edge (None: the first). With
    # several segment workers frames arrive out of order; this tells render which frame comes
    # next, so a seq gap left by a live drop is not waited for.
    prev_seq: int | None = None
    # Which run of the capture numbered `seq`: its start, wall-clock ns (None: not known).
    # seq counts from 0 again when the capture starts again; a display that outlives the
    # publisher tells the new run from the old by this, whatever seq it joins at.
    run: int | None = None
    trace: list[tuple[str, int, int]] = field(default_factory=list)
    # Not on the wire: how far this host moved the frame's monotonic times on receipt
    # (0: sent from this host). Non-zero latencies are only as good as the hosts' clock sync.
    clock_shift_ns: int = 0
    # Not on the wire: set while the parts are unleased views of a sender's shared-memory
    # slot (pipeline/shm.py); the receiver leases the slot (or copies) and clears it before
    # handing the frame on.
    lease: Any = None

    @classmethod
    def capture(cls, stream: str, seq: int, image: np.ndarray) -> Frame:
        return cls(stream, seq, time.monotonic_ns(), time.time_ns(), image)

    def branch(self) -> Frame:
        """A Frame sharing this one's arrays (never copied) with a trace of its own, for one
        edge of a fan-out. Built from __dict__: copy.copy goes through __reduce_ex__, about
        three times as long, on every in-process hop."""
        mine = object.__new__(Frame)
        mine.__dict__.update(self.__dict__)
        mine.trace = list(self.trace)
        return mine

    def stamp(self, stage: str, t_in_ns: int, t_out_ns: int | None = None) -> None:
        self.trace.append((stage, t_in_ns, t_out_ns if t_out_ns is not None
                           else time.monotonic_ns()))
