"""Render puts frames from several segment workers back in capture order, never stalling."""

from __future__ import annotations

import numpy as np

from orstream.pipeline.frame import Frame
from orstream.pipeline.reorder import Reorder

MS = 1_000_000


def _frame(seq: int, prev: int | None, stream: str = "or-1") -> Frame:
    return Frame(stream, seq, seq * 33 * MS, 0, np.zeros((2, 2, 3), np.uint8), prev_seq=prev)


def _drain(r: Reorder, now: int) -> list[int]:
    out = []
    while (f := r.pop(now)) is not None:
        out.append(f.seq)
    return out


def test_out_of_order_frames_come_out_in_capture_order():
    r = Reorder(window_ms=50)
    r.push(_frame(0, None), 0)
    assert _drain(r, 0) == [0]
    r.push(_frame(2, 1), 1 * MS)  # worker B was faster than worker A
    assert _drain(r, 1 * MS) == []  # 1 was sent: wait for it
    r.push(_frame(1, 0), 5 * MS)
    assert _drain(r, 5 * MS) == [1, 2]
    assert r.stats.reordered == 1 and r.stats.given_up == 0 and r.stats.late == 0


def test_a_seq_gap_left_by_a_live_drop_is_not_waited_for():
    r = Reorder(window_ms=50)
    r.push(_frame(3, None), 0)
    r.push(_frame(7, 3), 0)  # capture skipped 4..6 (latest-frame policy): 7 follows 3
    assert _drain(r, 0) == [3, 7]


def test_a_frame_that_never_comes_is_given_up_after_the_window_and_dropped_if_late():
    r = Reorder(window_ms=50)
    r.push(_frame(0, None), 0)
    r.push(_frame(2, 1), 10 * MS)
    r.push(_frame(3, 2), 20 * MS)
    assert _drain(r, 59 * MS) == [0]  # 1 still has time
    assert r.next_deadline_ns() == 60 * MS
    assert _drain(r, 60 * MS) == [2, 3]  # gave 1 up; 3 follows 2 at once
    assert r.stats.given_up == 1
    r.push(_frame(1, 0), 70 * MS)  # worker A finally answers: too late to show
    assert _drain(r, 70 * MS) == []
    assert r.stats.late == 1


def test_streams_are_ordered_independently():
    r = Reorder(window_ms=50)
    r.push(_frame(0, None, "or-1"), 0)
    r.push(_frame(0, None, "or-2"), 0)
    r.push(_frame(2, 1, "or-1"), 0)  # or-1 waits for its 1 ...
    r.push(_frame(1, 0, "or-2"), 0)  # ... which does not hold or-2 back
    assert sorted((f.stream, f.seq) for f in iter(lambda: r.pop(0), None)) == [
        ("or-1", 0), ("or-2", 0), ("or-2", 1)]
