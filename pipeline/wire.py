"""The wire format: a ZeroMQ multipart message of topic, JSON header, one raw buffer per part.

PROTOCOL.md at the repository root is the specification; this module is its reference
implementation. Decoding never copies pixel data (np.frombuffer over the received buffers)
and validates everything before any of it is used; a bad message raises WireError with a
short reason key that receivers count.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.frame import Caption, Frame

VERSION = 1
TOPIC_PREFIX = "orstream"
DTYPES: dict[str, np.dtype] = {
    "uint8": np.dtype(np.uint8),
    "uint16": np.dtype("<u2"),
    "int32": np.dtype("<i4"),
    "float32": np.dtype("<f4"),
}
PART_NAMES = ("image", "overlay", "labels")
MAX_PARTS = 8
DEFAULT_MAX_BYTES = 64 * 1024 * 1024  # a 4K frame with overlay and labels fits; 100 MB does not


class WireError(ValueError):
    """A message that does not follow PROTOCOL.md. `reason` is a short key for counters."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def topic(stream: str, kind: str = "frame") -> bytes:
    return f"{TOPIC_PREFIX}/{stream}/{kind}".encode()


def encode(frame: Frame, parts: Sequence[str] = ("overlay",),
           classes: dict[str, Any] | None = None) -> list[Any]:
    """Frame -> [topic, header, buffers...]; buffers are the arrays themselves (no copy)."""
    arrays = []
    descs = []
    for name in parts:
        array = getattr(frame, name)
        if array is None:
            continue
        if not array.flags.c_contiguous:
            array = np.ascontiguousarray(array)
        desc: dict[str, Any] = {"name": name, "dtype": array.dtype.name,
                                "shape": list(array.shape)}
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
        "caption": None if frame.caption is None else {
            "text": frame.caption.text, "seq": frame.caption.seq,
            "t_capture_ns": frame.caption.t_capture_ns},
    }
    if classes is not None:
        header["classes"] = classes
    return [topic(frame.stream), json.dumps(header, separators=(",", ":")).encode(), *arrays]


def _require(header: dict, key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in header:
        raise WireError("bad_header", f"missing field {key!r}")
    value = header[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise WireError("bad_header", f"field {key!r} has type {type(value).__name__}")
    return value


def _part_array(desc: Any, buffer: memoryview | bytes) -> tuple[str, np.ndarray, list | None]:
    if not isinstance(desc, dict):
        raise WireError("bad_part", "part descriptor is not an object")
    name, dtype_name, shape = desc.get("name"), desc.get("dtype"), desc.get("shape")
    if not isinstance(name, str) or not name:
        raise WireError("bad_part", f"part name {name!r} is not a string")
    if dtype_name not in DTYPES:
        raise WireError("bad_dtype", f"part {name!r} has unknown dtype {dtype_name!r}")
    if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
            or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise WireError("bad_part", f"part {name!r} has invalid shape {shape!r}")
    dtype = DTYPES[dtype_name]
    expected = math.prod(shape) * dtype.itemsize
    if len(buffer) != expected:
        raise WireError("bad_length", f"part {name!r} holds {len(buffer)} bytes but "
                        f"{dtype_name} x {shape} needs {expected}")
    region = desc.get("region")
    if region is not None and (not isinstance(region, list) or len(region) != 4
                               or not all(isinstance(v, int) and v >= 0 for v in region)):
        raise WireError("bad_part", f"part {name!r} has invalid region {region!r}")
    return name, np.frombuffer(buffer, dtype=dtype).reshape(shape), region


def decode(message: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES) -> Frame:
    """[topic, header, buffers...] (bytes, memoryviews or zmq.Frames) -> Frame, validated."""
    buffers = [m.buffer if hasattr(m, "buffer") else m for m in message]
    if len(buffers) < 2:
        raise WireError("bad_framing", f"{len(buffers)} frames, need topic and header")
    total = sum(len(b) for b in buffers)
    if total > max_bytes:
        raise WireError("oversize", f"{total} bytes over the cap of {max_bytes}")
    if len(buffers) - 2 > MAX_PARTS:
        raise WireError("bad_framing", f"{len(buffers) - 2} parts, at most {MAX_PARTS}")
    try:
        header = json.loads(bytes(buffers[1]))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WireError("bad_json", str(exc)[:80]) from None
    if not isinstance(header, dict):
        raise WireError("bad_json", "header is not a JSON object")
    version = header.get("v")
    if version != VERSION:
        raise WireError("bad_version", f"version {version!r}, this receiver speaks {VERSION}")
    descs = _require(header, "parts", list)
    if len(descs) != len(buffers) - 2:
        raise WireError("bad_framing", f"header lists {len(descs)} parts, message has "
                        f"{len(buffers) - 2}")
    frame = Frame(
        stream=_require(header, "stream", str),
        seq=_require(header, "seq", int),
        t_capture_ns=_require(header, "t_capture_ns", int),
        t_wall_ns=_require(header, "t_wall_ns", int),
        image=None,  # type: ignore[arg-type]  # filled from the parts below
    )
    for desc, buffer in zip(descs, buffers[2:], strict=True):
        name, array, region = _part_array(desc, buffer)
        if name not in PART_NAMES:
            continue  # a part added later in version 1: validated, then ignored
        if name in ("image", "overlay") and (array.ndim != 3 or array.shape[2] != 3
                                            or array.dtype != np.uint8):
            raise WireError("bad_part", f"part {name!r} must be (H, W, 3) uint8")
        setattr(frame, name, array)
        if name == "labels" and region is not None:
            frame.region = tuple(region)  # type: ignore[assignment]
    trace = header.get("trace", [])
    if not isinstance(trace, list) or not all(
            isinstance(t, list) and len(t) == 3 and isinstance(t[0], str)
            and isinstance(t[1], int) and isinstance(t[2], int) for t in trace):
        raise WireError("bad_header", "trace must be a list of [stage, t_in_ns, t_out_ns]")
    frame.trace = [(t[0], t[1], t[2]) for t in trace]
    media_s = header.get("media_s")
    if media_s is not None and (not isinstance(media_s, int | float) or isinstance(media_s, bool)):
        raise WireError("bad_header", "media_s must be a number or null")
    frame.media_s = None if media_s is None else float(media_s)
    caption = header.get("caption")
    if caption is not None:
        if not (isinstance(caption, dict) and isinstance(caption.get("text"), str)
                and isinstance(caption.get("seq"), int)
                and isinstance(caption.get("t_capture_ns"), int)):
            raise WireError("bad_header", "caption must have text, seq and t_capture_ns")
        frame.caption = Caption(caption["text"], caption["seq"], caption["t_capture_ns"])
    return frame


def header_of(message: Sequence[Any]) -> dict:
    """The JSON header of an already-validated message (for fields Frame does not carry)."""
    part = message[1]
    return json.loads(bytes(part.buffer if hasattr(part, "buffer") else part))
