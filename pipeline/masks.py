"""The mask-only stream: label map and instrument outlines, without pixels.

For displays that draw their own overlay on their own video: one ZeroMQ multipart message per
frame carries the label map run-length encoded, one polygon per instrument region in image
pixels, the class table, the caption, seq and the timestamps. A few kilobytes a frame where
the overlay stream sends megabytes. PROTOCOL.md ("Mask-only stream") is the specification;
this module is its reference implementation.

The runs are row-major (value, length) pairs, so any client rebuilds the map with
`np.repeat(values, lengths).reshape(h, w)` or a ten-line C loop. A frame without labels
(segmentation off) still goes out, with `labels` null, no buffers and no polygons: a display
keeps its clock, seq and caption.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from orstream.pipeline.frame import Caption, Frame
from orstream.pipeline.wire import (
    INT32,
    INT64,
    STREAM_ID,
    TOPIC_PREFIX,
    VERSION,
    WireError,
    class_table,
    finite_number,
    topic,
)

KIND = "mask"
ENCODING = "rle"
LENGTH_DTYPES: dict[str, np.dtype] = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
# A mask message is kilobytes; 16 MiB still admits the worst case of a 2048x2048 map of
# single-pixel runs (3 bytes a pixel with uint16 lengths) and refuses anything absurd.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
# The decoded map is allocated from header numbers: a cap keeps a hostile message whose runs
# sum to 10^10 from asking for 10 GB. 4096x4096 is far above any segmentation model's input.
DEFAULT_MAX_PIXELS = 4096 * 4096
# Douglas-Peucker tolerance in label pixels: outlines stay within about one label pixel of
# the map's boundary (4 image pixels at 1080p), with a few dozen points per instrument.
EPSILON_LABEL_PX = 1.0
JSON_SPACE = " \t\n\r"

Region = tuple[int, int, int, int]
_ENCODER = json.JSONEncoder(separators=(",", ":"), check_circular=False)


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")  # NaN, Infinity: Python's json accepts them


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


@dataclass(frozen=True)
class Polygon:
    class_id: int
    points: np.ndarray  # (N, 2) int32 [x, y] image pixels, N >= 1, closed (last joins first)
    holes: list[np.ndarray] = field(default_factory=list)  # outlines of its holes, likewise


@dataclass(eq=False)
class MaskMessage:
    stream: str
    seq: int
    t_capture_ns: int  # CLOCK_MONOTONIC of the capturing host
    t_wall_ns: int
    t_send_ns: int
    image_size: tuple[int, int]  # (H, W) of the picture the labels and polygons refer to
    labels: np.ndarray | None  # (h, w) uint8 class ids, None when segmentation is off
    region: Region | None  # (y, x, h, w) of the image the labels cover; None without labels
    polygons: list[Polygon] = field(default_factory=list)
    classes: dict[str, Any] | None = None
    caption: Caption | None = None
    media_s: float | None = None
    trace: list[tuple[str, int, int]] = field(default_factory=list)
    run: int | None = None  # the capture run that numbered seq (Frame.run)


def message_bytes(message: Sequence[Any]) -> int:
    """Bytes a multipart message puts on the wire (payload only): for this module's messages
    and wire.encode's alike, whose buffers are arrays (len() of an array counts rows)."""
    total = 0
    for part in message:
        if isinstance(part, np.ndarray | memoryview):
            total += part.nbytes
        else:
            total += len(part)
    return total


# --------------------------------------------------------------------------- encode


def rle(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(h, w) uint8 -> (values uint8, lengths): row-major runs, no empty run, no two adjacent
    runs of one value. lengths is '<u2' when every run fits, else '<u4'."""
    flat = labels.reshape(-1)  # (h*w,)
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # (runs-1,) index where a run begins
    bounds = np.empty(starts.size + 2, np.int64)
    bounds[0], bounds[1:-1], bounds[-1] = 0, starts, flat.size
    lengths = np.diff(bounds)  # (runs,)
    values = flat[bounds[:-1]]
    dtype = LENGTH_DTYPES["uint16" if lengths.max() <= 0xFFFF else "uint32"]
    return values, lengths.astype(dtype)


@functools.lru_cache(maxsize=16)  # one per (map shape, region, image size) on a live stream
def _label_to_image(h: int, w: int, region: Region, height: int, width: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Image x of each label column and y of each label row: the middle of the block of
    image pixels the protocol's nearest-neighbour rule maps to that label pixel, clipped
    to the image."""
    ry, rx, rh, rw = region

    def centres(n: int, offset: int, size: int, limit: int) -> np.ndarray:
        i = np.arange(n + 1, dtype=np.int64)
        first = (i * size + n - 1) // n  # ceil(i * size / n): first image pixel of block i
        return np.clip(offset + (first[:-1] + first[1:] - 1) // 2, 0, limit - 1)

    return centres(w, rx, rw, width), centres(h, ry, rh, height)


def polygons(labels: np.ndarray, values: np.ndarray, region: Region,
             image_size: tuple[int, int]) -> list[dict[str, Any]]:
    """One outline per 8-connected region of each class > 0, with its holes, in image
    pixels, as JSON: {"class", "points", "holes"}."""
    xs, ys = _label_to_image(*labels.shape, region, *image_size)

    def outline(contour: np.ndarray) -> list[list[int]]:
        simple = cv2.approxPolyDP(contour, EPSILON_LABEL_PX, True)[:, 0]  # (N, 2) [j, i]
        return np.stack([xs[simple[:, 0]], ys[simple[:, 1]]], axis=1).tolist()  # [x, y]

    out = []
    for class_id in np.unique(values).tolist():  # unique over runs, not over pixels
        if class_id == 0:
            continue
        mask = (labels == class_id).view(np.uint8)
        # CCOMP: outer boundaries at the top (also a region inside another's hole), each
        # with its holes as children: [next, previous, first child, parent] per contour.
        contours, hierarchy = cv2.findContours(mask, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        links = hierarchy[0].tolist()
        for contour, (_, _, child, parent) in zip(contours, links, strict=True):
            if parent != -1:
                continue
            holes = []
            while child != -1:
                holes.append(outline(contours[child]))
                child = links[child][0]
            out.append({"class": class_id, "points": outline(contour), "holes": holes})
    return out


def encode(frame: Frame, classes: dict[str, Any] | None = None) -> list[bytes]:
    """Frame -> [topic, header, values, lengths] (PROTOCOL.md, "Mask-only stream").

    Without labels: [topic, header], labels null and no polygons. `classes` is the class
    table as PublishStage builds it ({"task", "names", "colors"}) or None; the frame's own
    (`frame.classes`: TP-SIS's prompts) wins over it."""
    if frame.classes is not None:
        classes = frame.classes
    height, width = frame.image.shape[:2]
    labels = frame.labels
    desc: dict[str, Any] | None = None
    buffers: list[bytes] = []
    outlines: list[dict[str, Any]] = []
    if labels is not None:
        if labels.dtype != np.uint8 or labels.ndim != 2 or labels.size == 0:
            raise ValueError(f"labels must be a non-empty (h, w) uint8 map, got "
                             f"{labels.dtype} {labels.shape}")
        region = (0, 0, height, width) if frame.region is None else tuple(
            int(v) for v in frame.region)
        if min(region) < 0 or region[2] == 0 or region[3] == 0:
            raise ValueError(f"region (y, x, h, w) needs y, x >= 0 and h, w > 0, got {region}")
        values, lengths = rle(labels)
        if classes is not None and int(values.max()) >= len(classes["names"]):
            raise ValueError(f"label {int(values.max())} has no entry in the class table of "
                             f"{len(classes['names'])} classes")
        desc = {"encoding": ENCODING, "shape": list(labels.shape), "region": list(region),
                "runs": int(values.size),
                "length_dtype": "uint16" if lengths.itemsize == 2 else "uint32"}
        buffers = [values.tobytes(), lengths.tobytes()]
        outlines = polygons(labels, values, region, (height, width))  # type: ignore[arg-type]
    header = {
        "v": VERSION,
        "kind": KIND,
        "stream": frame.stream,
        "seq": frame.seq,
        "t_capture_ns": frame.t_capture_ns,
        "t_wall_ns": frame.t_wall_ns,
        "t_send_ns": time.monotonic_ns(),
        "media_s": frame.media_s,
        "image": [height, width],
        "labels": desc,
        "polygons": outlines,
        "classes": classes,
        "caption": None if frame.caption is None else {
            "text": frame.caption.text, "seq": frame.caption.seq,
            "t_capture_ns": frame.caption.t_capture_ns},
        "trace": [list(t) for t in frame.trace],
        "run": frame.run,
    }
    return [topic(frame.stream, KIND), _ENCODER.encode(header).encode(), *buffers]


# --------------------------------------------------------------------------- decode


def _parse_header(raw: Any) -> dict[str, Any]:
    try:
        text = bytes(raw).decode().lstrip(JSON_SPACE)
        header, end = _DECODER.raw_decode(text)
    # ValueError: bad UTF-8, bad JSON, NaN, an integer over Python's 4300 digits.
    # RecursionError: "[[[[..." nested deeper than the interpreter's stack.
    except (ValueError, RecursionError) as exc:
        raise WireError("bad_json", str(exc)[:80]) from None
    if text[end:].strip(JSON_SPACE):
        raise WireError("bad_json", f"extra data after the header object at byte {end}")
    if type(header) is not dict:
        raise WireError("bad_json", "header is not a JSON object")
    return header


def _time(value: Any) -> bool:
    return type(value) is int and 0 <= value < INT64  # JSON types are exact: bool is no int


def _field(header: dict, key: str) -> int:
    value = header.get(key)
    if not _time(value):
        raise WireError("bad_header", f"field {key!r} missing or not an integer in [0, 2^63)")
    return value


def _ints(value: Any, n: int, minimum: int) -> bool:
    return (type(value) is list and len(value) == n
            and all(type(v) is int and minimum <= v < INT32 for v in value))


def _classes(value: Any) -> dict[str, Any] | None:
    return None if value is None else class_table(value)


def _caption(value: Any) -> Caption | None:
    if value is None:
        return None
    if not (type(value) is dict and type(value.get("text")) is str
            and _time(value.get("seq")) and _time(value.get("t_capture_ns"))):
        raise WireError("bad_header", "caption must have text, seq and t_capture_ns")
    return Caption(value["text"], value["seq"], value["t_capture_ns"])


def _trace(value: Any) -> list[tuple[str, int, int]]:
    if type(value) is not list or not all(
            type(t) is list and len(t) == 3 and type(t[0]) is str
            and _time(t[1]) and _time(t[2]) for t in value):
        raise WireError("bad_header", "trace must be a list of [stage, t_in_ns, t_out_ns]")
    return [(t[0], t[1], t[2]) for t in value]


def _labels(desc: Any, buffers: Sequence[Any], num_classes: int,
            max_pixels: int) -> tuple[np.ndarray, Region]:
    if type(desc) is not dict or desc.get("encoding") != ENCODING:
        raise WireError("bad_labels", f"labels must be an object with encoding {ENCODING!r}")
    shape, region, runs = desc.get("shape"), desc.get("region"), desc.get("runs")
    if not _ints(shape, 2, 1):
        raise WireError("bad_labels", f"invalid shape {shape!r}")
    if not _ints(region, 4, 0) or region[2] == 0 or region[3] == 0:
        raise WireError("bad_labels", f"invalid region {region!r}")
    if type(runs) is not int or runs < 1:
        raise WireError("bad_labels", f"runs must be a positive integer, got {runs!r}")
    name = desc.get("length_dtype")
    length_dtype = LENGTH_DTYPES.get(name) if type(name) is str else None
    if length_dtype is None:
        raise WireError("bad_labels", f"unknown length_dtype {name!r}")
    h, w = shape
    if h * w > max_pixels:
        raise WireError("oversize", f"label map {h}x{w} over the cap of {max_pixels} pixels")
    values_buf, lengths_buf = buffers
    if len(lengths_buf) % length_dtype.itemsize:
        raise WireError("bad_length", f"lengths buffer of {len(lengths_buf)} bytes is not a "
                        f"multiple of {length_dtype.itemsize}")
    if len(values_buf) != runs or len(lengths_buf) != runs * length_dtype.itemsize:
        raise WireError("bad_length", f"{runs} runs, but {len(values_buf)} value bytes and "
                        f"{len(lengths_buf)} length bytes")
    values = np.frombuffer(values_buf, np.uint8)
    lengths = np.frombuffer(lengths_buf, length_dtype)
    total = int(lengths.sum(dtype=np.uint64))  # at most 16 Mi runs of 2^32: no overflow
    if total != h * w:
        raise WireError("bad_runs", f"runs cover {total} pixels, the map has {h * w}")
    if int(values.max()) >= num_classes:
        raise WireError("bad_class", f"label {int(values.max())} with {num_classes} classes")
    return np.repeat(values, lengths).reshape(h, w), tuple(region)  # type: ignore[return-value]


def _points(value: Any, height: int, width: int) -> np.ndarray:
    if type(value) is not list or not value or not all(
            type(p) is list and len(p) == 2 and type(p[0]) is int and type(p[1]) is int
            and 0 <= p[0] < width and 0 <= p[1] < height for p in value):
        raise WireError("bad_polygon", "an outline must be 1 or more [x, y] integer pixels "
                        "inside the image")
    return np.array(value, np.int32).reshape(-1, 2)


def _polygons(value: Any, height: int, width: int, num_classes: int) -> list[Polygon]:
    if type(value) is not list:
        raise WireError("bad_polygon", "polygons must be a list")
    out = []
    for poly in value:
        if type(poly) is not dict:
            raise WireError("bad_polygon", "a polygon must be an object")
        class_id, holes = poly.get("class"), poly.get("holes", [])
        if type(class_id) is not int or not 1 <= class_id < num_classes:
            raise WireError("bad_class", f"polygon class {class_id!r} with {num_classes} "
                            f"classes")
        if type(holes) is not list:
            raise WireError("bad_polygon", "holes must be a list of outlines")
        out.append(Polygon(class_id, _points(poly.get("points"), height, width),
                           [_points(hole, height, width) for hole in holes]))
    return out


def decode(message: Sequence[Any], max_bytes: int = DEFAULT_MAX_BYTES,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> MaskMessage:
    """[topic, header, values, lengths] (bytes, 1-D memoryviews or zmq.Frames) ->
    MaskMessage, validated; anything that does not follow PROTOCOL.md raises WireError."""
    if len(message) not in (2, 4):
        raise WireError("bad_framing", f"{len(message)} frames, need 2 (no labels) or 4")
    total = sum(map(len, message))
    if total > max_bytes:
        raise WireError("oversize", f"{total} bytes over the cap of {max_bytes}")
    header = _parse_header(message[1])
    version = header.get("v")
    if type(version) is not int or version != VERSION:
        raise WireError("bad_version", f"version {version!r}, this receiver speaks {VERSION}")
    if header.get("kind") != KIND:
        raise WireError("bad_kind", f"kind {header.get('kind')!r}, expected {KIND!r}")
    stream = header.get("stream")
    if type(stream) is not str or not STREAM_ID.fullmatch(stream):
        raise WireError("bad_header", f"stream id {str(stream)[:70]!r} is not "
                        "[A-Za-z0-9_.-]{1,64}")
    # Built here, not by wire.topic: its cache would grow with every stream id a peer invents.
    if bytes(message[0]) != f"{TOPIC_PREFIX}/{stream}/{KIND}".encode():
        raise WireError("bad_topic", f"topic {bytes(message[0])[:80]!r} is not that of stream "
                        f"{stream!r}")
    image = header.get("image")
    if not _ints(image, 2, 1):
        raise WireError("bad_header", f"image must be [H, W], got {image!r}")
    media_s = header.get("media_s")
    if media_s is not None and not finite_number(media_s):
        raise WireError("bad_header", "media_s must be a number or null")
    classes = _classes(header.get("classes"))
    num_classes = 256 if classes is None else len(classes["names"])
    result = MaskMessage(
        stream, _field(header, "seq"), _field(header, "t_capture_ns"),
        _field(header, "t_wall_ns"), _field(header, "t_send_ns"),
        (image[0], image[1]), None, None, classes=classes,
        caption=_caption(header.get("caption")),
        media_s=None if media_s is None else float(media_s),
        trace=_trace(header.get("trace", [])))
    run = header.get("run")
    if run is not None and not _time(run):
        raise WireError("bad_header", "run must be an integer in [0, 2^63), or null")
    result.run = run
    if "labels" not in header:
        raise WireError("bad_header", "missing field 'labels' (null when segmentation is off)")
    desc = header["labels"]
    if (desc is None) != (len(message) == 2):
        raise WireError("bad_framing", f"labels {'null' if desc is None else 'given'} with "
                        f"{len(message) - 2} buffers")
    if desc is not None:
        result.labels, result.region = _labels(desc, message[2:], num_classes, max_pixels)
    result.polygons = _polygons(header.get("polygons"), *result.image_size, num_classes)
    if result.polygons and result.labels is None:
        raise WireError("bad_polygon", "polygons without a label map")
    return result
