"""shm:// edges: pixels through a shared-memory ring, leased in place, never torn."""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import threading
import time

import numpy as np
import pytest
from numba import njit

from orstream.pipeline import shm, wire
from orstream.pipeline.frame import Frame
from orstream.pipeline.transport import Receiver, Sender


def _frame(seq: int, size=(36, 64)) -> Frame:
    frame = Frame.capture("or-1", seq, np.full((*size, 3), seq % 256, np.uint8))
    frame.labels = np.full(size, seq % 7, np.uint8)
    return frame


def _send_from_child(endpoint: str, frames: int, ready: mp.Event) -> None:
    with Sender(endpoint, "lossless", parts=("image", "labels"), bind=False) as tx:
        ready.set()
        for i in range(frames):
            while not tx.send(_frame(i, (1080, 1920))):
                pass
        time.sleep(0.5)  # linger: the last messages leave before the socket closes


def test_frames_cross_processes_in_place_and_every_pixel_arrives(tmp_path):
    endpoint = f"shm://{tmp_path}/edge"
    frames = 12
    ctx = mp.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_send_from_child, args=(endpoint, frames, ready))
    with Receiver(endpoint, "lossless", bind=True) as rx:
        child.start()
        got = []
        deadline = time.monotonic() + 60
        while len(got) < frames and time.monotonic() < deadline:
            frame = rx.recv(500)
            if frame is not None:
                got.append(frame)
        child.join(30)
    assert [f.seq for f in got] == list(range(frames))
    for f in got:  # all held at once: 12 frames, more than the ring's slots are leased
        assert f.image.shape == (1080, 1920, 3) and (f.image == f.seq % 256).all()
        assert (f.labels == f.seq % 7).all()
    leased = [f for f in got if not f.image.flags.writeable]
    # In place: the sender's slot, read-only (a consumer must not write into it); frames
    # sent while every slot was leased came inline, as over ipc://.
    assert leased, "no frame was read in place"
    assert child.exitcode == 0
    assert not list(shm.directory().glob(f"orstream-{child.pid}-*")), "ring file left behind"


def test_a_held_frame_is_never_overwritten_and_the_sender_goes_inline_when_all_are_held(
        tmp_path, prime):
    endpoint = f"shm://{tmp_path}/held"
    # A roomy SNDHWM: libzmq's PUB learns what its subscriber has read only every few
    # messages and at most once a millisecond, so back-to-back sends over a small high-water
    # mark drop a message now and then (latest mode may drop; this test counts every frame).
    with Receiver(endpoint, "latest", bind=False, hwm=64) as rx, \
            Sender(endpoint, "latest", parts=("image", "labels"), hwm=64) as tx:
        prime(tx, rx, _frame)
        gc.collect()  # the priming frames' leases go back
        held = []
        for i in range(1, 3 * shm.DEFAULT_SLOTS):
            tx.send(_frame(i))
            frame = rx.recv(1000)
            assert frame is not None and frame.seq == i, (i, rx.stats, tx.inline)
            held.append(frame)
        # Every slot is leased by a frame still held here: the rest went in the message.
        assert tx.inline >= len(held) - shm.DEFAULT_SLOTS
        for f in held:
            assert (f.image == f.seq % 256).all() and (f.labels == f.seq % 7).all()
        del held, frame
        gc.collect()  # the frames are gone: their leases are returned
        tx.send(_frame(100))
        again = rx.recv(1000)
        assert again is not None and not again.image.flags.writeable  # a slot again
        assert (again.image == 100).all()
        assert not rx.stats.rejected


def test_a_slot_reused_before_it_was_read_is_dropped_not_torn(tmp_path):
    ring, reader = shm.SlotRing(2, folder=tmp_path), shm.SlotReader(folder=tmp_path)
    try:
        first = wire.encode(_frame(1), ("image",), ring=ring)
        for seq in (2, 3):  # a 2-slot ring: frame 3 goes where frame 1 was
            wire.encode(_frame(seq), ("image",), ring=ring)
        frame = wire.decode(first, shm=reader)
        assert frame.lease is not None
        assert reader.claim([frame.image], frame.lease, hand_back=False) is None
    finally:
        ring.close()
    assert not list(tmp_path.iterdir()), "close() leaves no file"


def test_a_slot_with_no_free_lease_is_copied_out(tmp_path):
    ring, reader = shm.SlotRing(2, folder=tmp_path), shm.SlotReader(folder=tmp_path)
    try:
        frame = wire.decode(wire.encode(_frame(5), ("image",), ring=ring), shm=reader)
        words, base = frame.lease.mapping.words, frame.lease.slot_offset // 8
        for i in shm.LEASES:  # six other holders
            words[base + i] = os.getpid()
        (image,) = reader.claim([frame.image], frame.lease, hand_back=False)
        assert image.flags.writeable and (image == 5).all() and reader.copied == 1
    finally:
        ring.close()


def test_leases_of_a_receiver_that_died_are_taken_back(tmp_path):
    dead = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    ring, reader = shm.SlotRing(2, folder=tmp_path), shm.SlotReader(folder=tmp_path)
    try:
        frames = [wire.decode(wire.encode(_frame(seq), ("image",), ring=ring), shm=reader)
                  for seq in (1, 2)]
        for frame in frames:  # both slots leased by a display that was then SIGKILLed
            words, base = frame.lease.mapping.words, frame.lease.slot_offset // 8
            words[base + shm.LEASES[0]] = dead.pid
        assert ring.write([_frame(3).image]) is not None, "a dead pid's lease blocks nothing"
        assert ring.reclaimed >= 1
    finally:
        ring.close()


def test_a_receiver_lets_go_of_the_rings_of_senders_that_closed(tmp_path):
    reader = shm.SlotReader(folder=tmp_path)
    for seq in range(3):  # a pipeline restarted three times in front of one display
        ring = shm.SlotRing(2, folder=tmp_path)
        frame = wire.decode(wire.encode(_frame(seq), ("image",), ring=ring), shm=reader)
        assert reader.claim([frame.image], frame.lease, hand_back=False) is not None
        ring.close()
    assert reader.rings_mapped == 1, "the closed senders' rings are no longer mapped"


def test_a_shm_folder_without_room_sends_frames_inline_instead_of_crashing(tmp_path,
                                                                          monkeypatch):
    def full(fd, offset, length):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)  # Docker's 64 MB /dev/shm, say
    ring = shm.SlotRing(2, folder=tmp_path)
    message = wire.encode(_frame(4), ("image", "labels"), ring=ring)
    assert len(message) == 4 and "shm" not in wire.header_of(message)  # in the message
    assert wire.encode(_frame(5), ("image",), ring=ring)[2] is not None
    assert ring.inline == 2 and not list(tmp_path.iterdir()), "no file left half-made"
    received = [part if isinstance(part, bytes) else part.tobytes() for part in message]
    frame = wire.decode(received, shm=shm.SlotReader(folder=tmp_path))
    assert frame.lease is None and (frame.image == 4).all()


def test_receivers_open_only_orstream_rings_of_this_user(tmp_path):
    ring, reader = shm.SlotRing(2, folder=tmp_path), shm.SlotReader(folder=tmp_path)
    (tmp_path / "orstream-1-0123456789abcdef").symlink_to("/etc/hostname")
    try:
        message = wire.encode(_frame(1), ("image",), ring=ring)
        header = wire.header_of(message)
        for path, reason in ((str(tmp_path / "secret"), "bad_shm"),
                             ("/etc/passwd", "bad_shm"),
                             (str(tmp_path / "orstream-1-0123456789abcdef"), "bad_shm"),
                             (str(tmp_path / "orstream-1-fedcba9876543210"), "shm_gone")):
            header["shm"]["path"] = path
            with pytest.raises(wire.WireError) as err:
                wire.decode([message[0], wire._ENCODER.encode(header).encode()], shm=reader)
            assert err.value.reason == reason, path
        with pytest.raises(wire.WireError, match="not shm://") as err:
            wire.decode(message)  # an ipc:// or tcp:// receiver never opens files
        assert err.value.reason == "bad_shm"
    finally:
        ring.close()


def test_lossless_waits_for_the_receiver_and_takes_slots_back_when_it_disconnects(tmp_path):
    ring = shm.SlotRing(2, lossless=True, folder=tmp_path)
    reader = shm.SlotReader(folder=tmp_path)
    try:
        first, _second = (wire.decode(wire.encode(_frame(seq), ("image",), ring=ring),
                                      shm=reader) for seq in (1, 2))
        assert not ring.room(0.01), "both slots wait to be read: the sender must wait"
        (image,) = reader.claim([first.image], first.lease, hand_back=True)
        assert ring.room(0.01)  # handed back...
        assert ring.write([_frame(3).image]) is None  # ...but still leased: goes inline
        del image, first
        gc.collect()
        assert ring.write([_frame(4).image]) is not None  # lease returned: the slot again
        assert not ring.room(0.01)
        assert ring.room(0.01, disconnected=lambda: True), "a gone receiver's slots return"
        assert ring.reclaimed == 2
    finally:
        ring.close()


def test_stale_rings_of_dead_senders_are_swept(tmp_path):
    dead = mp.get_context("spawn").Process(target=time.sleep, args=(0,))
    dead.start()
    dead.join()
    stale = tmp_path / f"orstream-{dead.pid}-0123456789abcdef"
    live = tmp_path / f"orstream-{os.getpid()}-0123456789abcdef"
    stale.write_bytes(b"x")
    live.write_bytes(b"x")
    assert shm.sweep_stale(tmp_path) == 1
    assert not stale.exists() and live.exists()


@njit(nogil=True)
def _count_up(words, times):
    for _ in range(times):
        while True:
            old = words[0]
            if shm.compare_and_swap(words, 0, old, old + 1):
                break


def test_compare_and_swap_loses_no_update_between_threads():
    words = np.zeros(1, "<u8")
    _count_up(words, 1)  # compile before the threads start
    threads = [threading.Thread(target=_count_up, args=(words, 200_000)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert words[0] == 1 + 400_000
    assert shm.swap(words, 0, 7) == 400_001 and words[0] == 7
