"""Malformed messages for every socket orstream reads, generated with hypothesis.

Structure-aware: each case starts from a real message (a real Frame through wire.encode or
masks.encode, a real question) and breaks one rule of PROTOCOL.md, so that it is invalid by
construction and its rejection can be demanded: wrong part counts, lengths, dtypes, shapes,
huge / negative / NaN numbers, deep or broken JSON, wrong versions and kinds, shared-memory
descriptors pointing anywhere (other names, past the end, wrong generations). A share of the
cases are valid but adversarial (unknown fields and parts, extreme but legal values, tiny
pictures, odd unicode): those must be delivered like any frame.

A strategy returns a Case; benchmarks/fuzz.py sends it over a real socket.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

from orstream.pipeline import wire

INT64 = 1 << 63
# Values of every JSON type, shallow: what a confused or hostile peer puts where a field goes.
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=12))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=8)
# Integers a receiver must refuse where a seq or a time goes.
BAD_TIMES = st.one_of(st.integers(max_value=-1), st.integers(min_value=INT64),
                      st.sampled_from([-1, INT64, 1 << 64, 10 ** 30, -(10 ** 30)]))
# NaN and the infinities are not JSON, and a 400-digit integer is no float: spliced into the
# text, since json.dumps would not write the first and Python reads the last as an int.
NOT_FINITE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1" + "0" * 400, "-1e999"])


@dataclass
class Case:
    parts: list[bytes]
    mutation: str  # which rule it breaks ("header.seq", "shm.stamp"...), or what it stretches
    good: bool = False  # valid but adversarial: must be delivered


@dataclass
class Template:
    """A real message to break: topic, its header as an object, its buffers."""

    topic: bytes
    header: dict[str, Any]
    buffers: list[bytes]

    @classmethod
    def of(cls, message: list[Any]) -> Template:
        buffers = [bytes(memoryview(b).cast("B")) if not isinstance(b, bytes) else b
                   for b in message[2:]]
        return cls(bytes(message[0]), json.loads(bytes(message[1])), buffers)

    def message(self, header: dict[str, Any] | None = None,
                buffers: list[bytes] | None = None) -> list[bytes]:
        header = self.header if header is None else header
        return [self.topic, json.dumps(header).encode(),
                *(self.buffers if buffers is None else buffers)]

    def copy(self) -> dict[str, Any]:
        return json.loads(json.dumps(self.header))


def _splice(header: dict[str, Any], key: str, raw: str) -> bytes:
    """The header as JSON text with `key` holding `raw` verbatim (not JSON-encoded)."""
    header = dict(header)
    header[key] = "@@SPLICE@@"
    return json.dumps(header).replace('"@@SPLICE@@"', raw, 1).encode()


# ----------------------------------------------------------------- both frame-like streams


@st.composite
def broken_json(draw: st.DrawFn, t: Template) -> Case:
    """A header that is not one UTF-8 JSON object."""
    text = json.dumps(t.header).encode()
    how = draw(st.sampled_from(["binary", "truncated", "not_object", "deep", "digits",
                                "trailing", "bad_utf8", "empty", "not_finite"]))
    if how == "binary":
        raw = b"\xff" + draw(st.binary(max_size=64))  # 0xff never occurs in UTF-8
    elif how == "truncated":
        raw = text[:draw(st.integers(0, len(text) - 1))]
    elif how == "not_object":
        raw = json.dumps(draw(st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3)))
                         ).encode()
    elif how == "deep":
        n = draw(st.integers(2_000, 200_000))
        raw = b"[" * n + b"]" * n if draw(st.booleans()) else b'{"a":' * n + b"1" + b"}" * n
    elif how == "digits":
        raw = text[:-1] + b',"x":' + b"9" * draw(st.integers(4_400, 20_000)) + b"}"
    elif how == "trailing":
        raw = text + draw(st.sampled_from([b"x", b"{}", b"\x00", b" ,", b"\xc2\xa0"]))
    elif how == "bad_utf8":
        raw = text[:-1] + b',"x":"\xc3\x28"}'
    elif how == "empty":
        raw = b""
    else:  # NaN, Infinity: not JSON, even in a field nobody reads
        raw = _splice(t.header, draw(st.sampled_from(["media_s", "x", "seq"])),
                      draw(st.sampled_from(["NaN", "Infinity", "-Infinity"])))
    return Case([t.topic, raw, *t.buffers], f"json.{how}")


@st.composite
def wrong_version(draw: st.DrawFn, t: Template) -> Case:
    header = t.copy()
    if draw(st.booleans()):
        del header["v"]
    else:
        header["v"] = draw(st.one_of(
            st.sampled_from([0, 2, -1, 1 << 64, True, False, 1.0, "1", None, [1], {"v": 1}]),
            st.integers().filter(lambda v: v != 1)))
    return Case(t.message(header), "version")


# ----------------------------------------------------------------- the frame stream


FRAME_TIMES = ("seq", "t_capture_ns", "t_wall_ns")


@st.composite
def bad_frame_header(draw: st.DrawFn, t: Template) -> Case:
    """A required field missing, mistyped or out of range; an optional one malformed."""
    header = t.copy()
    key = draw(st.sampled_from(["stream", *FRAME_TIMES, "parts", "trace", "caption",
                                "media_s", "prev_seq", "wall_minus_mono_ns"]))
    if key in ("stream", *FRAME_TIMES, "parts") and draw(st.integers(0, 4)) == 0:
        del header[key]
        return Case(t.message(header), f"header.{key}.missing")
    if key == "stream":
        header[key] = draw(st.one_of(
            st.sampled_from(["", "x" * 65, "a/b", "../x", "or 1", "or-1\n", "ö", "{stream}"]),
            st.text(min_size=1, max_size=70).filter(lambda s: not wire.STREAM_ID.fullmatch(s)),
            JSON_VALUES.filter(lambda v: type(v) is not str)))
    elif key in FRAME_TIMES:
        header[key] = draw(st.one_of(BAD_TIMES, JSON_VALUES.filter(lambda v: type(v) is not int)))
    elif key == "parts":
        header[key] = draw(JSON_VALUES.filter(lambda v: type(v) is not list))
    elif key == "trace":
        entry = draw(st.one_of(
            JSON_VALUES.filter(lambda v: type(v) is not list),
            st.lists(JSON_SCALARS, max_size=5).filter(lambda v: len(v) != 3),
            st.tuples(JSON_SCALARS.filter(lambda v: type(v) is not str),
                      st.integers(0, 9), st.integers(0, 9)).map(list),
            st.tuples(st.just("capture"), BAD_TIMES, st.integers(0, 9)).map(list)))
        header[key] = draw(st.one_of(st.just([entry]),
                                     JSON_VALUES.filter(lambda v: type(v) is not list)))
    elif key == "caption":
        caption = {"text": "smoke", "seq": 1, "t_capture_ns": 1}
        field = draw(st.sampled_from(["text", "seq", "t_capture_ns", "whole"]))
        if field == "whole":
            header[key] = draw(JSON_VALUES.filter(lambda v: v is not None
                                                  and type(v) is not dict))
        elif draw(st.booleans()):
            del caption[field]
            header[key] = caption
        else:
            caption[field] = draw(BAD_TIMES if field != "text" else
                                  JSON_VALUES.filter(lambda v: type(v) is not str))
            header[key] = caption
    elif key == "media_s":
        if draw(st.booleans()):
            return Case([t.topic, _splice(header, key, draw(NOT_FINITE)), *t.buffers],
                        "header.media_s.not_finite")
        header[key] = draw(JSON_VALUES.filter(
            lambda v: v is not None and type(v) not in (int, float)))
    elif key == "prev_seq":
        seq = header["seq"]
        header[key] = draw(st.one_of(st.integers(seq, seq + 10), st.integers(max_value=-1),
                                     st.sampled_from(["0", 1.5, True, [0]])))
    else:  # wall_minus_mono_ns: not an int64, or one that moves the times below zero
        header[key] = draw(st.sampled_from([-INT64, 1 << 63, 1.5, "0", True, [0]]))
    return Case(t.message(header), f"header.{key}")


@st.composite
def bad_part(draw: st.DrawFn, t: Template) -> Case:
    """A part descriptor that is no descriptor, or one whose dtype, shape or region is
    wrong; its buffer is made to match where the rule broken is not the length."""
    header = t.copy()
    buffers = list(t.buffers)
    i = draw(st.integers(0, len(header["parts"]) - 1))
    desc = header["parts"][i]
    how = draw(st.sampled_from(["not_object", "name", "dtype", "shape", "picture", "labels",
                                "region"]))
    if how == "not_object":
        header["parts"][i] = draw(JSON_VALUES.filter(lambda v: type(v) is not dict))
    elif how == "name":
        desc["name"] = draw(st.one_of(st.just(""), JSON_VALUES.filter(
            lambda v: type(v) is not str)))
    elif how == "dtype":
        desc["dtype"] = draw(st.one_of(
            st.sampled_from(["float64", "uint8 ", "UINT8", "<u1", "complex64", "object", ""]),
            JSON_VALUES.filter(lambda v: v not in wire.DTYPES if type(v) is str else True)))
    elif how == "shape":
        desc["shape"] = draw(st.one_of(
            st.just([]), st.lists(st.integers(1, 3), min_size=5, max_size=7),
            st.lists(st.one_of(st.integers(max_value=0), st.sampled_from([1.0, True, "2"])),
                     min_size=1, max_size=4),
            JSON_VALUES.filter(lambda v: type(v) is not list)))
    elif how == "picture":  # image / overlay must be (H, W, 3) uint8
        picture = next((k for k, d in enumerate(header["parts"])
                        if d["name"] in ("image", "overlay")), None)
        if picture is None:
            return draw(bad_part(t))
        desc = header["parts"][picture]
        h, w = desc["shape"][:2]
        desc["shape"], desc["dtype"] = draw(st.sampled_from([
            ([h, w, 4], "uint8"), ([h, w], "uint8"), ([h, w, 3], "uint16"),
            ([h * w * 3], "uint8"), ([h, w, 3, 1], "uint8"), ([h, w, 3], "float32")]))
        need = _nbytes(desc)
        buffers[picture] = (buffers[picture] * (need // len(buffers[picture]) + 1))[:need]
    elif how == "labels":
        labels = next((k for k, d in enumerate(header["parts"]) if d["name"] == "labels"),
                      None)
        if labels is None:
            return draw(bad_part(t))
        desc = header["parts"][labels]
        h, w = desc["shape"]
        desc["shape"], desc["dtype"] = draw(st.sampled_from([
            ([h, w, 1], "uint8"), ([h * w], "uint8"), ([h, w], "float32"),
            ([h, w], "int32")]))
        need = _nbytes(desc)
        buffers[labels] = (buffers[labels] * (need // len(buffers[labels]) + 1))[:need]
    else:
        desc["region"] = draw(st.one_of(
            st.lists(st.integers(0, 9), max_size=6).filter(lambda r: len(r) != 4),
            st.tuples(st.integers(-5, -1), st.integers(0, 9), st.integers(1, 9),
                      st.integers(1, 9)).map(list),
            st.tuples(st.integers(0, 9), st.integers(0, 9), st.just(0),
                      st.integers(0, 9)).map(list),
            st.tuples(st.integers(0, 9), st.integers(0, 9), st.integers(1, 9),
                      st.integers(1 << 31, 1 << 70)).map(list),
            st.just([0, 0, 1.5, 2]), st.just([0, 0, True, 2]),
            JSON_VALUES.filter(lambda v: v is not None and type(v) is not list)))
    return Case(t.message(header, buffers), f"part.{how}")


def _nbytes(desc: dict) -> int:
    n = wire.DTYPES[desc["dtype"]].itemsize
    for d in desc["shape"]:
        n *= d
    return n


@st.composite
def bad_framing(draw: st.DrawFn, t: Template) -> Case:
    how = draw(st.sampled_from(["alone", "fewer", "more", "too_many"]))
    if how == "alone":
        return Case([draw(st.binary(max_size=64))], "framing.alone")
    if how == "fewer" and t.buffers:
        return Case(t.message(buffers=t.buffers[:-1]), "framing.fewer")
    if how == "too_many":
        header = t.copy()
        n = draw(st.integers(wire.MAX_PARTS + 1, 16))
        header["parts"] = [{"name": f"extra{k}", "dtype": "uint8", "shape": [1]}
                           for k in range(n)]
        return Case(t.message(header, [b"\0"] * n), "framing.too_many")
    extra = draw(st.lists(st.binary(max_size=16), min_size=1, max_size=3))
    return Case(t.message(buffers=[*t.buffers, *extra]), "framing.more")


@st.composite
def bad_length(draw: st.DrawFn, t: Template) -> Case:
    buffers = list(t.buffers)
    i = draw(st.integers(0, len(buffers) - 1))
    delta = draw(st.one_of(st.integers(-len(buffers[i]), -1), st.integers(1, 4096)))
    buffers[i] = buffers[i][:delta] if delta < 0 else buffers[i] + bytes(delta)
    return Case(t.message(buffers=buffers), "length")


def oversize(t: Template, max_bytes: int, extra: int) -> Case:
    """A message `extra` bytes over the receiver's cap (its header may be anything)."""
    size = sum(map(len, t.message()))
    return Case(t.message(buffers=[*t.buffers, bytes(max_bytes - size + extra)]), "oversize")


class ShmForge:
    """What a forger knows of a real ring (pipeline/shm.py SlotRing): its file, slot size
    and the stamps in it now; and decoy files in the shared-memory folder named like rings
    that no receiver may read (a symlink, a folder, a FIFO, files shorter than a slot)."""

    def __init__(self, ring: Any, decoys: list[Path]) -> None:
        self.ring = ring
        self.decoys = decoys

    @property
    def path(self) -> Path:
        return self.ring.path

    @property
    def slot_bytes(self) -> int:
        return self.ring.slot_bytes

    @property
    def slots(self) -> int:
        return self.ring.slots

    def stamp(self, slot: int) -> int:
        """The slot's stamp now, read from the file as a receiver reads it."""
        words = np.memmap(self.path, "<u8", "r")
        return int(words[slot * self.slot_bytes // 8])


# Stream ids of the stale-generation cases: 200 of the 256 a receiver takes, the
# harness's own "or-1" among the rest.
GENERATION_STREAMS = 200


@st.composite
def bad_shm(draw: st.DrawFn, t: Template, forge: ShmForge | None) -> Case:
    """A `shm` object pointing anywhere. `forge`: the receiver is a shm:// one and this is
    the ring its sender writes; None: any `shm` object is refused (not a shm:// endpoint)."""
    header = t.copy()
    for k, desc in enumerate(header["parts"]):
        desc["offset"] = 64 + 4096 * k
    ref: Any = {"path": f"/dev/shm/orstream-{os.getpid()}-{'0' * 16}", "slot_offset": 0,
                "stamp": 2}
    if forge is None:
        header["shm"] = ref
        return Case(t.message(header, []), "shm.not_shm_endpoint")
    slot = draw(st.integers(0, forge.slots - 1))
    base = slot * forge.slot_bytes
    ref = {"path": str(forge.path), "slot_offset": base, "stamp": 2}
    for k, desc in enumerate(header["parts"]):
        desc["offset"] = base + 64 + 4096 * k
    how = draw(st.sampled_from(["not_object", "path", "other_name", "decoy", "gone",
                                "slot_offset", "stamp", "generation", "offset", "inline"]))
    if how == "not_object":
        ref = draw(JSON_VALUES.filter(lambda v: type(v) is not dict))
    elif how == "path":
        ref["path"] = draw(JSON_VALUES.filter(lambda v: type(v) is not str))
    elif how == "other_name":  # outside the folder, or not an orstream ring's name
        ref["path"] = draw(st.sampled_from([
            "/etc/passwd", "/dev/zero", "/proc/self/mem", "orstream-1-0000000000000000",
            f"{forge.path.parent}/../shm/{forge.path.name}", f"{forge.path}x",
            f"{forge.path.parent}/orstream-1-ABCDEF0123456789",
            f"{forge.path.parent}/orstream-12345678901-0123456789abcdef",
            f"/tmp/{forge.path.name}", ""]))
    elif how == "decoy":
        ref["path"] = str(draw(st.sampled_from(forge.decoys)))
    elif how == "gone":
        ref["path"] = f"{forge.path.parent}/orstream-{os.getpid()}-{'f' * 16}"
    elif how == "slot_offset":
        ref["slot_offset"] = draw(st.one_of(
            st.integers(max_value=-1), st.integers(1, 63), st.just(base + 32),
            st.integers(forge.slots * forge.slot_bytes // 64, 1 << 40).map(lambda n: n * 64),
            st.sampled_from([1.0, "0", None, True])))
    elif how == "stamp":
        ref["stamp"] = draw(st.one_of(st.sampled_from([0, 1, 3, -2, 1 << 64, 2.0, "2", None]),
                                      st.integers(0, 1000).map(lambda n: 2 * n + 1)))
    elif how == "generation":  # an even stamp this slot has not (or no longer) got
        # Past ones, or ones far ahead: the sender may write the slot again meanwhile, but
        # never two million times. (Drawn as an index: the draws must not depend on `now`.)
        now = forge.stamp(slot)
        k = draw(st.integers(0, 3))
        stamp = (now - 2, now - 4, now + 2_000_000, 1 << 62)[k]
        ref["stamp"] = stamp if stamp >= 2 else now + 2_000_000 + 2 * k
        # Its own stream: `latest` keeps one pending frame per stream, and this one is only
        # refused when taken (the stamp is read then), so a later frame must not supersede it.
        # Drawn from fewer ids than a receiver takes (transport.MAX_STREAMS), so that the
        # whole run reaches this rule, not too_many_streams after the first few hundred.
        header["stream"] = f"fz{draw(st.integers(0, GENERATION_STREAMS - 1))}"
    elif how == "offset":
        k = draw(st.integers(0, len(header["parts"]) - 1))
        header["parts"][k]["offset"] = draw(st.one_of(
            st.integers(max_value=base + 63), st.just(forge.slots * forge.slot_bytes),
            st.integers(min_value=forge.slots * forge.slot_bytes),
            st.sampled_from([None, 64.0, "64"])))
    else:  # parts said to be in the ring, and in the message too
        header["shm"] = ref
        return Case(t.message(header), "shm.inline")
    header["shm"] = ref
    return Case(t.message(header, []), f"shm.{how}")


@st.composite
def frame_case(draw: st.DrawFn, t: Template, max_bytes: int, require: tuple[str, ...],
               forge: ShmForge | None) -> Case:
    """One invalid frame-stream message, built from the real message `t`."""
    kinds = [broken_json, wrong_version, bad_frame_header, bad_part, bad_framing, bad_length]
    weights = [3, 1, 4, 4, 2, 2]
    which = draw(st.integers(0, sum(weights) + 3))
    if which >= sum(weights):
        extra = which - sum(weights)
        if extra == 0:
            return oversize(t, max_bytes, draw(st.integers(1, 4096)))
        if extra == 1 and require:
            header = t.copy()
            keep = [k for k, d in enumerate(header["parts"]) if d["name"] not in require]
            header["parts"] = [header["parts"][k] for k in keep]
            return Case(t.message(header, [t.buffers[k] for k in keep]), "missing_part")
        return draw(bad_shm(t, forge))
    for kind, weight in zip(kinds, weights, strict=True):
        if which < weight:
            return draw(kind(t))
        which -= weight
    raise AssertionError("unreachable")


@dataclass
class FrameSpec:
    """A valid but adversarial frame: the harness builds it as a real Frame, encodes it
    (into the ring, on shm://) and sends it with `extra` fields merged into its header."""

    height: int
    width: int
    labels: tuple[int, int] | None
    region: tuple[int, int, int, int] | None
    t_capture_ns: int
    t_wall_ns: int
    media_s: float | None
    caption: str | None
    extra: dict[str, Any]  # unknown header fields: ignored by receivers
    unknown_part: bool  # a part with a name of the future: validated, then ignored
    spaces: bool  # JSON whitespace before and after the object


@st.composite
def adversarial_frame(draw: st.DrawFn) -> FrameSpec:
    labels = draw(st.one_of(st.none(), st.tuples(st.integers(1, 24), st.integers(1, 24))))
    return FrameSpec(
        draw(st.integers(1, 48)), draw(st.integers(1, 64)), labels,
        draw(st.one_of(st.none(), st.tuples(
            st.integers(0, (1 << 31) - 1), st.integers(0, (1 << 31) - 1),
            st.integers(1, (1 << 31) - 1), st.integers(1, (1 << 31) - 1)),
            st.tuples(st.integers(0, 4), st.integers(0, 4), st.integers(1, 64),
                      st.integers(1, 64)))) if labels else None,
        draw(st.one_of(st.just(0), st.just(INT64 - 1), st.integers(0, INT64 - 1))),
        draw(st.one_of(st.just(0), st.just(INT64 - 1), st.integers(0, INT64 - 1))),
        draw(st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False),
                       st.integers(-INT64, INT64 - 1).map(float))),
        draw(st.one_of(st.none(), st.text(max_size=200))),
        draw(st.dictionaries(st.text(max_size=8).filter(lambda k: k not in KNOWN_FIELDS),
                             JSON_VALUES, max_size=3)),
        draw(st.booleans()), draw(st.booleans()))


# Every header field PROTOCOL.md defines (tests/test_fuzz.py holds this to its tables): an
# unknown field of a good frame must be unknown. Hypothesis draws text from the string
# constants of this project's code, so it does write "run" or "prev_seq" as a key, and a
# missing name here made good frames invalid (the stage-ipc finding of 2026-12-06).
KNOWN_FIELDS = {"v", "stream", "seq", "t_capture_ns", "t_wall_ns", "t_send_ns", "parts",
                "trace", "media_s", "caption", "classes", "prev_seq", "wall_minus_mono_ns",
                "run", "shm", "kind", "image", "labels", "polygons"}


# ----------------------------------------------------------------- the mask stream


@st.composite
def bad_mask(draw: st.DrawFn, t: Template, max_bytes: int, max_pixels: int) -> Case:
    """One invalid mask-stream message, built from the real message `t` (with labels)."""
    kind = draw(st.sampled_from(["json", "version", "kind", "header", "topic", "framing",
                                 "labels", "length", "runs", "class", "polygon", "oversize",
                                 "pixels"]))
    header = t.copy()
    buffers = list(t.buffers)
    if kind == "json":
        return draw(broken_json(t))
    if kind == "version":
        return draw(wrong_version(t))
    if kind == "kind":
        header["kind"] = draw(JSON_VALUES.filter(lambda v: v != "mask"))
    elif kind == "header":
        key = draw(st.sampled_from(["stream", "seq", "t_capture_ns", "t_wall_ns", "t_send_ns",
                                    "image", "media_s", "classes", "caption", "trace",
                                    "labels"]))
        if key == "labels":
            del header[key]
        elif key == "stream":
            header[key] = draw(st.one_of(st.sampled_from(["", "x" * 65, "a/b"]),
                                         JSON_VALUES.filter(lambda v: type(v) is not str)))
        elif key == "image":
            header[key] = draw(st.one_of(st.sampled_from([[0, 5], [5], [5, 5, 5], [1 << 31, 4],
                                                           [4.0, 4], None]),
                                         JSON_VALUES.filter(lambda v: type(v) is not list)))
        elif key == "media_s":
            return Case([t.topic, _splice(header, key, draw(NOT_FINITE)), *buffers],
                        "mask.header.media_s")
        elif key == "classes":
            header[key] = draw(st.sampled_from([
                {"task": "x", "names": [], "colors": []},
                {"task": "x", "names": ["a"], "colors": [[0, 0, 256]]},
                {"task": "x", "names": ["a", "b"], "colors": [[0, 0, 0]]},
                {"task": 1, "names": ["a"], "colors": [[0, 0, 0]]}, [1], "x"]))
        elif key in ("caption", "trace"):
            header[key] = draw(st.sampled_from([{"text": 1}, [["a", -1, 0]], "x", 5,
                                                [["a", 1]]]))
            if key == "caption" and type(header[key]) is list:
                header[key] = {"text": "a", "seq": -1, "t_capture_ns": 0}
        else:
            header[key] = draw(st.one_of(BAD_TIMES, JSON_VALUES.filter(
                lambda v: type(v) is not int)))
    elif kind == "topic":
        return Case([draw(st.binary(max_size=40).filter(lambda b: b != t.topic)),
                     json.dumps(header).encode(), *buffers], "mask.topic")
    elif kind == "framing":
        how = draw(st.sampled_from([1, 3, 5, "null_with_buffers", "labels_without"]))
        if how == "null_with_buffers":
            header["labels"], header["polygons"] = None, []
        elif how == "labels_without":
            buffers = []
        else:
            parts = [t.topic, json.dumps(header).encode(), *buffers, b"", b""][:how]
            return Case(parts, f"mask.framing.{how}")
    elif kind == "labels":
        labels = header["labels"]
        key = draw(st.sampled_from(["encoding", "shape", "region", "runs", "length_dtype",
                                    "whole"]))
        if key == "whole":
            header["labels"] = draw(JSON_VALUES.filter(lambda v: v is not None
                                                       and type(v) is not dict))
        else:
            labels[key] = draw({
                "encoding": st.sampled_from(["RLE", "png", "", None, 1]),
                "shape": st.sampled_from([[0, 4], [4], [4, 4, 4], [1 << 31, 1], [2.0, 2]]),
                "region": st.sampled_from([[0, 0, 0, 4], [-1, 0, 4, 4], [0, 0, 4], "x"]),
                "runs": st.sampled_from([0, -1, 1.0, "1", None, 1 << 31]),
                "length_dtype": st.sampled_from(["uint8", "<u2", "int32", None, ["uint16"]]),
            }[key])
    elif kind == "length":
        size = 2 if header["labels"]["length_dtype"] == "uint16" else 4
        which = draw(st.integers(0, 1))
        delta = draw(st.integers(1, 9))
        if which == 1 and draw(st.booleans()):
            delta = size  # a whole run more: lengths no longer match runs
        buffers[which] = buffers[which] + bytes(delta)
    elif kind == "runs":  # lengths that do not add up to h * w
        lengths = bytearray(buffers[1])
        lengths[0] = (lengths[0] + draw(st.integers(1, 255))) % 256
        buffers[1] = bytes(lengths)
    elif kind == "class":
        if draw(st.booleans()) and header["classes"] is not None:
            values = bytearray(buffers[0])
            values[draw(st.integers(0, len(values) - 1))] = draw(
                st.integers(len(header["classes"]["names"]), 255))
            buffers[0] = bytes(values)
        else:
            header["polygons"] = [{"class": draw(st.sampled_from([0, -1, 256, 1.0, "1"])),
                                   "points": [[0, 0]]}]
    elif kind == "polygon":
        height, width = header["image"]
        header["polygons"] = draw(st.sampled_from([
            "x", [1], [{"class": 1, "points": []}], [{"class": 1, "points": [[width, 0]]}],
            [{"class": 1, "points": [[0, height]]}], [{"class": 1, "points": [[-1, 0]]}],
            [{"class": 1, "points": [[0, 0, 0]]}], [{"class": 1, "points": [[0.5, 0]]}],
            [{"class": 1, "points": [[0, 0]], "holes": "x"}],
            [{"class": 1, "points": [[0, 0]], "holes": [[]]}]]))
    elif kind == "oversize":
        return Case([*t.message(header, buffers[:1]),
                     buffers[1] + bytes(max_bytes)], "mask.oversize")
    else:  # a map over the pixel cap, refused before anything is allocated
        header["labels"]["shape"] = [max_pixels // 1000 + 1, 1001]
    return Case(t.message(header, buffers), f"mask.{kind}")


# ----------------------------------------------------------------- the ask socket


@st.composite
def bad_question(draw: st.DrawFn, limit: int) -> Case:
    """One request the ask socket must refuse with an error reply."""
    how = draw(st.sampled_from(["binary", "json", "not_object", "no_question", "wrong_type",
                                "empty", "deep", "tokens", "multipart", "oversize"]))
    if how == "binary":
        raw = b"\xff" + draw(st.binary(max_size=64))
    elif how == "json":
        raw = draw(st.sampled_from([b"", b"{", b'{"question": "a"', b"question", b"{'q': 1}",
                                    b'{"question": "\xc3\x28"}']))
    elif how == "not_object":
        raw = json.dumps(draw(st.one_of(JSON_SCALARS, st.lists(JSON_SCALARS, max_size=3)))
                         ).encode()
    elif how == "no_question":
        raw = json.dumps(draw(st.dictionaries(
            st.text(max_size=9).filter(lambda k: k != "question"), JSON_VALUES, max_size=3))
        ).encode()
    elif how == "wrong_type":
        raw = json.dumps({"question": draw(JSON_VALUES.filter(lambda v: type(v) is not str))}
                         ).encode()
    elif how == "empty":
        raw = json.dumps({"question": draw(st.text(alphabet=" \t\n\r\x0b\x0c", max_size=9))}
                         ).encode()
    elif how == "deep":  # as deep as fits under the limit
        n = draw(st.integers(1_000, (limit - 16) // 2))
        raw = b'{"question":' + b"[" * n + b"]" * n + b"}"
    elif how == "tokens":  # within the byte limit, longer than the model's prompt
        raw = json.dumps({"question": "a " * draw(st.integers(100, (limit - 20) // 2))}
                         ).encode()
    elif how == "multipart":
        return Case([json.dumps({"question": "is there smoke?"}).encode(),
                     *draw(st.lists(st.binary(max_size=16), min_size=1, max_size=3))],
                    "ask.multipart")
    else:
        raw = json.dumps({"question": "a" * draw(st.integers(limit, 4 * limit))}).encode()
    return Case([raw], f"ask.{how}")


def good_question() -> st.SearchStrategy[Case]:
    """Questions that must get an answer: odd unicode, control characters, lone
    surrogates, long but within the limits."""
    return st.one_of(
        st.text(min_size=1, max_size=60).filter(lambda s: s.strip()),
        st.sampled_from(["is there smoke?", "\ud800 where is the \x00 forceps?",
                         "\U0001f600 " * 20, "how many instruments? " * 10,
                         "a" * 3000]),
    ).map(lambda q: Case([json.dumps({"question": q}).encode()], "ask.good", good=True))
