from __future__ import annotations

import json

import numpy as np
import pytest

from orstream.pipeline import wire
from orstream.pipeline.frame import Caption, Frame


def _frame() -> Frame:
    rng = np.random.default_rng(0)
    f = Frame("or-2", 41, 123_456_789, 1_700_000_000_000_000_000,
              rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    f.overlay = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    f.labels = rng.integers(0, 8, (16, 20), dtype=np.uint8)
    f.region = (2, 4, 40, 50)
    f.caption = Caption("bipolar forceps enter from the left", 30, 100)
    f.stamp("capture", 123_456_789, 123_456_800)
    f.stamp("segment", 123_457_000, 123_458_000)
    return f


def _bytes(message) -> list[bytes]:
    return [bytes(m) if not isinstance(m, np.ndarray) else m.tobytes() for m in message]


def test_round_trip_keeps_every_field_and_part():
    f = _frame()
    message = _bytes(wire.encode(f, ("image", "overlay", "labels"), {"task": "types"}))
    assert message[0] == b"orstream/or-2/frame"
    g = wire.decode(message)
    assert (g.stream, g.seq, g.t_capture_ns, g.t_wall_ns) == ("or-2", 41, 123_456_789,
                                                             1_700_000_000_000_000_000)
    assert np.array_equal(g.image, f.image)
    assert np.array_equal(g.overlay, f.overlay)
    assert np.array_equal(g.labels, f.labels)
    assert g.region == (2, 4, 40, 50)
    assert g.caption == f.caption
    assert g.trace == f.trace
    assert g.media_s is None
    f.media_s = 12.5
    assert wire.decode(_bytes(wire.encode(f, ("labels",)))).media_s == 12.5
    assert wire.header_of(message)["classes"] == {"task": "types"}


def test_decode_does_not_copy_pixels():
    f = _frame()
    message = _bytes(wire.encode(f, ("overlay",)))
    buffer = bytearray(message[2])
    g = wire.decode([message[0], message[1], memoryview(buffer)])
    buffer[0] ^= 0xFF  # the decoded array is a view of the received buffer
    assert g.overlay.reshape(-1)[0] == buffer[0]


def _header(**changes) -> bytes:
    f = _frame()
    header = json.loads(wire.encode(f, ("labels",))[1])
    header.update(changes)
    return json.dumps(header).encode()


@pytest.mark.parametrize(("message", "reason"), [
    ([b"\x00\xff" * 10], "bad_framing"),
    ([b"orstream/x/frame", b"{not json", b""], "bad_json"),
    ([b"orstream/x/frame", b"[1, 2]"], "bad_json"),
    ([b"orstream/x/frame", b"[" * 100_000], "bad_json"),  # RecursionError in json
    ([b"orstream/x/frame", b'{"v": 1, "seq": ' + b"9" * 5000 + b"}"], "bad_json"),  # int cap
    ([b"orstream/x/frame", _header(v=2), bytes(320)], "bad_version"),
    ([b"orstream/x/frame", _header(seq="41"), bytes(320)], "bad_header"),
    ([b"orstream/x/frame", _header(), bytes(319)], "bad_length"),
    ([b"orstream/x/frame", _header(), bytes(320), bytes(3)], "bad_framing"),
    ([b"orstream/x/frame", _header(parts=[{"name": "labels", "dtype": "complex64",
                                           "shape": [16, 20]}]), bytes(320)], "bad_dtype"),
    ([b"orstream/x/frame", _header(parts=[{"name": "labels", "dtype": "uint8",
                                           "shape": [16, -20]}]), bytes(320)], "bad_part"),
    ([b"orstream/x/frame", _header(parts=[{"name": "overlay", "dtype": "uint8",
                                           "shape": [16, 20]}]), bytes(320)], "bad_part"),
    ([b"orstream/x/frame", _header(trace="fast"), bytes(320)], "bad_header"),
    # Found by fuzzing (benchmarks/fuzz.py): each of these crashed a receiver or the stage
    # behind it, or let a peer choose what a shared stage opens.
    ([b"orstream/x/frame", _header(parts=[{"name": "labels", "dtype": ["uint8"],
                                           "shape": [16, 20]}]), bytes(320)], "bad_dtype"),
    ([b"orstream/x/frame", _header(parts=[{"name": "labels", "dtype": "uint8",
                                           "shape": [16, 20, 1]}]), bytes(320)], "bad_part"),
    ([b"orstream/x/frame", _header(parts=[{"name": "labels", "dtype": "uint8",
                                           "shape": [16, 20], "region": [0, 0, 0, 5]}]),
      bytes(320)], "bad_part"),
    ([b"orstream/x/frame", _header(stream="../../tmp/x"), bytes(320)], "bad_header"),
    ([b"orstream/x/frame", _header(seq=-1), bytes(320)], "bad_header"),
    ([b"orstream/x/frame", _header(t_capture_ns=1 << 63), bytes(320)], "bad_header"),
    ([b"orstream/x/frame", _header(media_s=10 ** 400), bytes(320)], "bad_header"),
    ([b"orstream/x/frame", _header().replace(b'"media_s": null', b'"media_s": NaN'),
      bytes(320)], "bad_json"),
    ([b"orstream/x/frame", _header(wall_minus_mono_ns=-(1 << 63)), bytes(320)], "bad_header"),
])
def test_invalid_messages_are_rejected_with_a_reason(message, reason):
    with pytest.raises(wire.WireError) as err:
        wire.decode(message)
    assert err.value.reason == reason


def test_oversize_is_rejected_before_parsing():
    with pytest.raises(wire.WireError) as err:
        wire.decode([b"t", b"{}", bytes(2048)], max_bytes=1024)
    assert err.value.reason == "oversize"


def test_unknown_part_name_is_validated_then_ignored():
    header = _header(parts=[{"name": "labels", "dtype": "uint8", "shape": [16, 20]},
                            {"name": "depth", "dtype": "float32", "shape": [2, 2]}])
    g = wire.decode([b"t", header, bytes(320), bytes(16)])
    assert g.labels.shape == (16, 20)
    with pytest.raises(wire.WireError):
        wire.decode([b"t", header, bytes(320), bytes(15)])


def test_times_from_another_host_are_moved_into_this_hosts_clock(monkeypatch):
    from orstream.pipeline import wire as w

    def as_bytes(message):  # what a socket delivers
        return [p if isinstance(p, bytes) else p.tobytes() for p in message]

    frame = Frame.capture("or-1", 5, np.zeros((4, 4, 3), np.uint8))
    frame.stamp("capture", frame.t_capture_ns)
    same = w.decode(as_bytes(w.encode(frame, ("image",))))
    assert same.t_capture_ns == frame.t_capture_ns and same.clock_shift_ns == 0
    # The sender booted an hour later than us: its monotonic clock reads an hour less.
    here = w.clock_offset_ns()
    monkeypatch.setattr(w, "clock_offset_ns", lambda: here + 3600 * 10**9)
    message = as_bytes(w.encode(frame, ("image",)))
    monkeypatch.undo()
    moved = w.decode(message)
    assert abs(moved.clock_shift_ns - 3600 * 10**9) < 10**7
    assert moved.t_capture_ns == frame.t_capture_ns + moved.clock_shift_ns
    assert moved.trace[0][1:] == tuple(t + moved.clock_shift_ns for t in frame.trace[0][1:])
