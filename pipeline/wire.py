"""The wire format: a ZeroMQ multipart message of topic, JSON header, one raw buffer per part.

PROTOCOL.md at the repository root is the specification; this module is its reference
implementation. Decoding never copies pixel data (np.frombuffer over the received buffers)
and validates everything before any of it is used; a bad message raises WireError with a
short reason key that receivers count.
"""

from __future__ import annotations

import functools
import json
import math
import re
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from orstream.pipeline.frame import Caption, Frame

if TYPE_CHECKING:  # pipeline.shm imports numba: only shm:// endpoints pay for it
    from orstream.pipeline.shm import SlotReader, SlotRing

VERSION = 1
TOPIC_PREFIX = "orstream"
DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype("<u2"),
    "int32": np.dtype("<i4"),
    "float32": np.dtype("<f4"),
}
# dtype -> wire name by lookup: dtype.name runs Python code inside numpy, ~60 us with the cold
# caches of the frame path (a dict lookup: ~4 us).
_DTYPE_NAMES: dict[np.dtype, str] = {dtype: name for name, dtype in DTYPES.items()}
PART_NAMES = ("image", "overlay", "labels")
MAX_PARTS = 8
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a 4K frame with overlay and labels fits; 100 MB does not
# Built once: json.dumps/json.loads with options build a new coder per call, and every call on
# the frame path runs with cold caches (the 6 MB frame has just gone through them), so each
# Python layer skipped is worth microseconds per hop.
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)
# Stream ids are names in topics, and in endpoints that a shared stage opens per stream
# ("{stream}" templates): only these characters, so a peer cannot name a path or a port.
STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
INT64 = 1 << 63  # seq and times: 0 <= value < 2^63, a C client's int64_t (and numpy's)
INT32 = 1 << 31  # sizes and pixel coordinates: 0 <= value < 2^31, int32_t


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json accepts them


# parse_constant runs only for NaN/Infinity, so the frame path pays nothing for it.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


class WireError(ValueError):
    """A message that does not follow PROTOCOL.md. `reason` is a short key for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@functools.cache  # one per stream and kind: sent with every frame
def topic(stream: str, kind: str = "frame") -> bytes:
    return f"{TOPIC_PREFIX}/{stream}/{kind}".encode()


def encode(frame: Frame, parts: Sequence[str] = ("overlay",),
           classes: dict[str, Any] | None = None, ring: SlotRing | None = None) -> list[Any]:
    """Frame -> [topic, header, buffers...]; buffers are the arrays themselves (no copy).

    With `ring` (shm:// endpoints) the parts are copied into a free slot instead, each
    descriptor gets its `offset` there, and the message is [topic, header] (if the ring has
    no free slot, the parts go in the message as usual)."""
    arrays = []
    descs = []
    for name in parts:
        array = getattr(frame, name)
        if array is None:
            continue
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        dtype_name = _DTYPE_NAMES.get(array.dtype) or array.dtype.name  # others: rejected
        desc: dict[str, Any] = {"name": name, "dtype": dtype_name, "shape": list(array.shape)}
        if name == "labels" and frame.region is not None:
            desc["region"] = list(frame.region)
        descs.append(desc)
        arrays.append(array)
    header: dict[str, Any] = {
        "v": VERSION,
        "stream": frame.stream,
        "seq": frame.seq,
        "t_capture_ns": frame.t_capture_ns,
        "t_wall_ns": frame.t_wall_ns,
        "t_send_ns": time.monotonic_ns(),
        "parts": descs,
        "trace": [list(t) for t in frame.trace],
        "media_s": frame.media_s,
        "prev_seq": frame.prev_seq,
        "run": frame.run,
        # Lets a receiver on another host bring the monotonic times into its own clock.
        "wall_minus_mono_ns": clock_offset_ns(),
        "caption": None if frame.caption is None else {
            "text": frame.caption.text, "seq": frame.caption.seq,
            "t_capture_ns": frame.caption.t_capture_ns},
    }
    if frame.classes is not None:  # the frame's own table (prompts) wins over the stream's
        classes = frame.classes
    if classes is not None:
        header["classes"] = classes
    placed = ring.write(arrays) if ring is not None else None
    if placed is not None:  # None: no ring, or every slot in use; the parts go inline
        header["shm"], offsets = placed
        for desc, offset in zip(descs, offsets, strict=True):
            desc["offset"] = offset
        return [topic(frame.stream), _ENCODER.encode(header).encode()]
    return [topic(frame.stream), _ENCODER.encode(header).encode(), *arrays]


def clock_offset_ns() -> int:
    """CLOCK_REALTIME - CLOCK_MONOTONIC here, now: the same for every process on a host."""
    return time.time_ns() - time.monotonic_ns()


# Offsets of two hosts differ by their boot times (seconds to years); on one host they agree
# within the microseconds between reading the two clocks, or by a wall-clock step (NTP) that
# happened between the sender's reading and ours. Below this, times are taken as they are.
SAME_HOST_NS = 50_000_000


def _rebase(frame: Frame, remote_offset: int) -> None:
    """Move the frame's monotonic times from the sender's clock into this host's, through
    the wall clock: exact on one host, as good as the hosts' clock sync across hosts."""
    shift = remote_offset - clock_offset_ns()
    if abs(shift) < SAME_HOST_NS:
        return
    # Sent on, a time outside int64 would be refused by the next hop: refuse it here.
    if not (_time(frame.t_capture_ns + shift)
            and all(_time(t_in + shift) and _time(t_out + shift)
                    for _, t_in, t_out in frame.trace)
            and (frame.caption is None or _time(frame.caption.t_capture_ns + shift))):
        raise WireError("bad_header", f"wall_minus_mono_ns {remote_offset} puts the times "
                        "outside [0, 2^63) in this host's clock")
    frame.t_capture_ns += shift
    frame.clock_shift_ns = shift
    frame.trace = [(stage, t_in + shift, t_out + shift) for stage, t_in, t_out in frame.trace]
    if frame.caption is not None:
        frame.caption = Caption(frame.caption.text, frame.caption.seq,
                                frame.caption.t_capture_ns + shift)


def _require(header: dict, key: str, kind: type) -> Any:
    if key not in header:
        raise WireError("bad_header", f"missing field {key!r}")
    value = header[key]
    # type() is: JSON gives exact types, and bool must not pass for int.
    if type(value) is not kind:
        raise WireError("bad_header", f"field {key!r} has type {type(value).__name__}")
    return value


def _time(value: Any) -> bool:
    """A seq or a time: a JSON integer in [0, 2^63). Stages do arithmetic with them and
    carry them in int64 (numpy, timecode, recordings): a larger one would fail there."""
    return type(value) is int and 0 <= value < INT64


def finite_number(value: Any) -> bool:
    """A JSON number a float holds: finite, and an integer within int64 (math.isfinite of a
    400-digit integer raises OverflowError, and so would float() of it later)."""
    if type(value) is float:
        return math.isfinite(value)
    return type(value) is int and -INT64 <= value < INT64


def _require_time(header: dict, key: str) -> int:
    value = _require(header, key, int)
    if not 0 <= value < INT64:
        raise WireError("bad_header", f"field {key!r} is not in [0, 2^63)")
    return value


def _parse_header(raw: Any) -> Any:
    """UTF-8 JSON text -> object. The compact object every encoder writes goes straight to the
    decoder's scanner; anything else (leading whitespace, say) takes json.loads' full path."""
    try:
        text = bytes(raw).decode()
        if not text.startswith("{"):
            return _DECODER.decode(text)
        header, end = _DECODER.raw_decode(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("bad_json", str(exc)[:80]) from None
    except (RecursionError, ValueError) as exc:  # nested 100k deep; a 5000-digit integer
        raise WireError("bad_json", f"{exc.__class__.__name__}: {str(exc)[:60]}") from None
    if end != len(text) and text[end:].strip(" \t\n\r"):  # JSON's whitespace, as json.loads
        raise WireError("bad_json", f"extra data after the header object at byte {end}")
    return header


def _part_spec(desc: Any) -> tuple[str, np.dtype, list, int]:
    """A part descriptor, validated: (name, dtype, shape, byte length)."""
    if type(desc) is not dict:
        raise WireError("bad_part", "part descriptor is not an object")
    name, dtype_name, shape = desc.get("name"), desc.get("dtype"), desc.get("shape")
    if type(name) is not str or not name:
        raise WireError("bad_part", f"part name {name!r} is not a string")
    if type(dtype_name) is not str or dtype_name not in DTYPES:  # a list is unhashable
        raise WireError("bad_dtype", f"part {name!r} has unknown dtype {dtype_name!r}")
    if type(shape) is not list or not 1 <= len(shape) <= 4:
        raise WireError("bad_part", f"part {name!r} has invalid shape {shape!r}")
    for d in shape:
        if type(d) is not int or d <= 0:
            raise WireError("bad_part", f"part {name!r} has invalid shape {shape!r}")
    if name in ("image", "overlay") and (len(shape) != 3 or shape[2] != 3
                                         or dtype_name != "uint8"):
        raise WireError("bad_part", f"part {name!r} must be (H, W, 3) uint8")
    if name == "labels" and (len(shape) != 2 or dtype_name != "uint8"):
        raise WireError("bad_part", "part 'labels' must be (h, w) uint8")
    dtype = DTYPES[dtype_name]
    return name, dtype, shape, math.prod(shape) * dtype.itemsize


def _part_array(desc: dict, spec: tuple[str, np.dtype, list, int], buffer: Any
                ) -> tuple[np.ndarray, list | None]:
    name, dtype, shape, expected = spec
    if len(buffer) != expected:
        raise WireError("bad_length", f"part {name!r} holds {len(buffer)} bytes but "
                        f"{desc['dtype']} x {shape} needs {expected}")
    region = desc.get("region")
    # h, w >= 1: render divides by them; all below 2^31: they become C ints there.
    if region is not None and (type(region) is not list or len(region) != 4
                               or not all(type(v) is int and 0 <= v < INT32 for v in region)
                               or region[2] == 0 or region[3] == 0):
        raise WireError("bad_part", f"part {name!r} has invalid region {str(region)[:80]}")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape), region


def decode(message: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES,
           shm: SlotReader | None = None) -> Frame:
    """[topic, header, buffers...] (bytes, 1-D memoryviews or zmq.Frames) -> Frame, validated.

    Every part must give its byte length with len() and expose the buffer protocol: zmq.Frames
    are used as they are (np.frombuffer keeps the Frame, and so the received bytes, alive).
    A message whose parts are in shared memory is accepted only with `shm` (the receivers of
    shm:// endpoints): its arrays are then views of the sender's slot and `frame.lease` says
    which; the receiver makes them safe with SlotReader.claim (a lease, or a copy) first."""
    if len(message) < 2:
        raise WireError("bad_framing", f"{len(message)} frames, need topic and header")
    total = sum(map(len, message))
    if total > max_bytes:
        raise WireError("oversize", f"{total} bytes over the cap of {max_bytes}")
    if len(message) - 2 > MAX_PARTS:
        raise WireError("bad_framing", f"{len(message) - 2} parts, at most {MAX_PARTS}")
    header = _parse_header(message[1])
    if type(header) is not dict:
        raise WireError("bad_json", "header is not a JSON object")
    version = header.get("v")
    if version != VERSION or type(version) is not int:
        raise WireError("bad_version", f"version {version!r}, this receiver speaks {VERSION}")
    descs = _require(header, "parts", list)
    specs = [_part_spec(desc) for desc in descs]
    lease = None
    if "shm" in header:
        if shm is None:
            raise WireError("bad_shm", "parts in shared memory (a shm:// sender) on an "
                            "endpoint that is not shm://: receive with shm://PATH, not ipc://")
        if len(message) != 2:
            raise WireError("bad_framing", f"{len(message) - 2} buffers after a header whose "
                            "parts are in shared memory")
        sizes = [spec[3] for spec in specs]
        if total + sum(sizes) > max_bytes:
            raise WireError("oversize", f"{total + sum(sizes)} bytes over the cap of "
                            f"{max_bytes}")
        from orstream.pipeline.shm import ShmError

        try:
            buffers, lease = shm.locate(header["shm"], descs, sizes)
        except ShmError as exc:
            raise WireError(exc.reason, str(exc).partition(": ")[2]) from None
    else:
        if len(descs) != len(message) - 2:
            raise WireError("bad_framing", f"header lists {len(descs)} parts, message has "
                            f"{len(message) - 2}")
        buffers = message[2:]
    stream = _require(header, "stream", str)
    if not STREAM_ID.fullmatch(stream):
        raise WireError("bad_header", f"stream id {stream[:70]!r} is not [A-Za-z0-9_.-]{{1,64}}")
    frame = Frame(stream, _require_time(header, "seq"), _require_time(header, "t_capture_ns"),
                  _require_time(header, "t_wall_ns"),
                  None)  # type: ignore[arg-type]  # image: filled from the parts below
    frame.lease = lease
    for desc, spec, buffer in zip(descs, specs, buffers, strict=True):
        name = spec[0]
        array, region = _part_array(desc, spec, buffer)
        if name not in PART_NAMES:
            continue  # a part added later in version 1: validated, then ignored
        setattr(frame, name, array)
        if name == "labels" and region is not None:
            frame.region = tuple(region)  # type: ignore[assignment]
    trace = header.get("trace", [])
    if type(trace) is not list:
        raise WireError("bad_header", "trace must be a list of [stage, t_in_ns, t_out_ns]")
    if trace:
        for t in trace:
            if (type(t) is not list or len(t) != 3 or type(t[0]) is not str
                    or not _time(t[1]) or not _time(t[2])):
                raise WireError("bad_header",
                                "trace must be a list of [stage, t_in_ns, t_out_ns]")
        frame.trace = [(t[0], t[1], t[2]) for t in trace]
    media_s = header.get("media_s")
    if media_s is not None:
        if not finite_number(media_s):
            raise WireError("bad_header", "media_s must be a finite number or null")
        frame.media_s = float(media_s)
    caption = header.get("caption")
    if caption is not None:
        if not (type(caption) is dict and type(caption.get("text")) is str
                and _time(caption.get("seq")) and _time(caption.get("t_capture_ns"))):
            raise WireError("bad_header", "caption must have text, seq and t_capture_ns")
        frame.caption = Caption(caption["text"], caption["seq"], caption["t_capture_ns"])
    prev_seq = header.get("prev_seq")
    if prev_seq is not None:
        if type(prev_seq) is not int or not 0 <= prev_seq < frame.seq:
            raise WireError("bad_header", "prev_seq must be an integer below seq, or null")
        frame.prev_seq = prev_seq
    run = header.get("run")
    if run is not None:
        if not _time(run):
            raise WireError("bad_header", "run must be an integer in [0, 2^63), or null")
        frame.run = run
    classes = header.get("classes")
    if type(classes) is dict and classes.get("task") == "prompts":
        # A table of the frame's own (TP-SIS prompts, which change while running): render
        # draws with it. A fixed task's table is the stream's, left in the header, and no
        # receiver of those pays for its check.
        frame.classes = class_table(classes)
    offset = header.get("wall_minus_mono_ns")
    if offset is not None:
        if type(offset) is not int or not -INT64 <= offset < INT64:
            raise WireError("bad_header", "wall_minus_mono_ns must be an int64")
        _rebase(frame, offset)
    return frame


def _rgb(value: Any) -> bool:
    return type(value) is list and len(value) == 3 and all(
        type(v) is int and 0 <= v <= 255 for v in value)


def class_table(value: Any) -> dict[str, Any]:
    """A header's `classes` object, validated: a task, 1-256 names, one [r, g, b] each."""
    if type(value) is not dict:
        raise WireError("bad_header", "classes must be an object or null")
    names, colors = value.get("names"), value.get("colors")
    if (type(value.get("task")) is not str or type(names) is not list
            or not 1 <= len(names) <= 256 or not all(type(n) is str for n in names)):
        raise WireError("bad_header", "classes needs task and 1-256 names")
    if type(colors) is not list or len(colors) != len(names) or not all(map(_rgb, colors)):
        raise WireError("bad_header", "classes needs one [r, g, b] (0-255) per name")
    return value


def header_of(message: Sequence[Any]) -> dict:
    """The JSON header of an already-validated message (for fields Frame does not carry)."""
    part = message[1]
    return json.loads(bytes(part.buffer if hasattr(part, "buffer") else part))
