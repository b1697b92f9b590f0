"""In-process mailboxes: waits that wake, time out, and deal each frame to one taker."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from orstream.common.errors import UsageError
from orstream.pipeline import inproc
from orstream.pipeline.frame import Frame
from orstream.pipeline.transport import Receiver, Sender


def _frame(seq: int) -> Frame:
    return Frame.capture("or-1", seq, np.zeros((2, 2, 3), np.uint8))


def test_a_full_lossless_box_holds_the_sender_until_room_is_made_or_its_timeout_passes():
    box = inproc.Mailbox("inproc://t-room", "lossless", 2)
    assert box.put(_frame(0), 0.1) and box.put(_frame(1), 0.1)
    t0 = time.monotonic()
    assert not box.put(_frame(2), 0.15), "a full box must refuse once the timeout passes"
    assert time.monotonic() - t0 >= 0.14
    threading.Timer(0.1, lambda: box.get(0)).start()
    t0 = time.monotonic()
    assert box.put(_frame(2), 5.0), "the get made room"
    assert 0.05 < time.monotonic() - t0 < 2.0
    assert [box.get(0.1).seq for _ in range(2)] == [1, 2]


def test_an_empty_box_wakes_its_taker_on_a_put_and_times_out_without_one():
    box = inproc.Mailbox("inproc://t-wake", "latest", 1)
    t0 = time.monotonic()
    assert box.get(0.15) is None
    assert time.monotonic() - t0 >= 0.14
    threading.Timer(0.1, lambda: box.put(_frame(7), 0)).start()
    t0 = time.monotonic()
    frame = box.get(5.0)
    assert frame is not None and frame.seq == 7
    assert time.monotonic() - t0 < 2.0, "the put must wake the waiting taker at once"


def test_several_takers_share_a_lossless_box_and_each_frame_goes_to_exactly_one():
    box = inproc.Mailbox("inproc://t-deal", "lossless", 4)
    taken: list[list[int]] = [[], [], []]

    def take(mine: list[int]) -> None:
        while (frame := box.get(0.5)) is not None:
            mine.append(frame.seq)

    takers = [threading.Thread(target=take, args=(mine,)) for mine in taken]
    for t in takers:
        t.start()
    for seq in range(300):
        assert box.put(_frame(seq), 5.0)
    for t in takers:
        t.join(10)
    assert sorted(s for mine in taken for s in mine) == list(range(300))
    assert all(mine == sorted(mine) for mine in taken)  # each taker sees them in order


def test_latest_keeps_only_the_newest_and_counts_the_rest():
    box = inproc.Mailbox("inproc://t-new", "latest", 8)
    for seq in range(5):
        assert box.put(_frame(seq), 0)
    assert box.get(0).seq == 4 and box.superseded == 4
    assert box.get(0) is None


def test_misusing_an_inproc_endpoint_is_an_expected_error_naming_it():
    with Receiver("inproc://t-misuse", "latest", bind=True):
        with pytest.raises(UsageError, match="inproc://t-misuse is already open in latest"):
            Sender("inproc://t-misuse", "lossless")
        with Sender("inproc://t-misuse", "latest") as tx, \
                pytest.raises(UsageError, match="inproc://t-misuse: inproc edges carry Frames"):
            tx.send_raw([b"orstream/x/frame", b"{}"])
