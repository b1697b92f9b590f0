from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import zmq

from orstream.common.classes import CLASSES
from orstream.pipeline import masks, wire
from orstream.pipeline.frame import Caption, Frame
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

REGION_1080P = (28, 320, 1024, 1280)  # the EndoVis crop of a 1920x1080 frame
IMAGE_1080P = np.zeros((1080, 1920, 3), np.uint8)


def _classes(task: str) -> dict:
    names = list(CLASSES[task])  # type: ignore[index]
    return {"task": task, "names": names, "colors": [[0, 0, 0]] + [[0, 160, 255]] * (
        len(names) - 1)}


@pytest.fixture(scope="module")
def synth_maps() -> dict[str, list[np.ndarray]]:
    """Ground-truth label maps of frames with instruments, at a model's 320x256."""
    synth = SyntheticEndoscope(SynthConfig(width=320, height=256, seed=5))
    frames = [synth.render(i) for i in range(0, 240, 12)]
    frames = [f for f in frames if np.count_nonzero(f.types) > 500][:6]
    assert len(frames) >= 3, "the synthetic video should show instruments"
    return {task: [f.label(task) for f in frames] for task in ("binary", "parts", "types")}


def _frame(labels: np.ndarray | None, region=REGION_1080P, image=IMAGE_1080P) -> Frame:
    f = Frame("or-1", 42, 81_234_567_890_123, 1_795_846_212_345_678_901, image)
    if labels is not None:
        f.labels, f.region = labels, region
    f.caption = Caption("a large needle driver in the upper left grasps tissue", 30,
                        81_234_167_890_123)
    f.stamp("capture", 81_234_567_890_123, 81_234_567_890_200)
    f.stamp("segment", 81_234_568_100_000, 81_234_590_000_000)
    return f


def _hand_map() -> np.ndarray:
    """Every shape the outlines must handle: a box, a ring with a hole and an island of its
    own class inside, a single pixel, a one-pixel line, a region touching the map's edge."""
    m = np.zeros((24, 32), np.uint8)
    m[2:8, 3:12] = 1
    m[12:22, 14:28] = 3
    m[14:20, 16:26] = 0
    m[17, 20] = 3
    m[3, 20] = 4
    m[9, 2:12] = 2
    m[0:5, 28:32] = 2
    return m


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("task", ["binary", "parts", "types"])
def test_round_trip_on_synthetic_label_maps(synth_maps, task):
    classes = _classes(task)
    for labels in synth_maps[task]:
        f = _frame(labels)
        message = masks.encode(f, classes)
        assert message[0] == b"orstream/or-1/mask"
        assert all(type(part) is bytes for part in message)
        m = masks.decode(message)
        assert np.array_equal(m.labels, labels)
        assert (m.stream, m.seq, m.t_capture_ns, m.t_wall_ns) == (
            f.stream, f.seq, f.t_capture_ns, f.t_wall_ns)
        assert type(m.t_send_ns) is int and m.t_send_ns >= f.t_capture_ns - 10**18
        assert m.image_size == (1080, 1920)
        assert m.region == REGION_1080P
        assert m.classes == classes
        assert m.caption == f.caption
        assert m.trace == f.trace
        assert m.media_s is None
        present = set(np.unique(labels).tolist()) - {0}
        assert {p.class_id for p in m.polygons} == present


def test_hand_made_map_round_trips_with_every_outline():
    labels = _hand_map()
    f = _frame(labels, region=None, image=np.zeros((24, 32, 3), np.uint8))
    f.media_s = 12.5
    m = masks.decode(masks.encode(f))
    assert np.array_equal(m.labels, labels)
    assert m.region == (0, 0, 24, 32)  # no region: the map covers the whole image
    assert m.classes is None and m.media_s == 12.5
    by_class = {c: [p.points for p in m.polygons if p.class_id == c] for c in (1, 2, 3, 4)}
    assert len(by_class[1]) == 1 and len(by_class[1][0]) == 4  # the box: its four corners
    assert len(by_class[2]) == 2  # the line and the corner block
    assert len(by_class[3]) == 2  # the ring's outer outline and the island in its hole
    ring, island = sorted((p for p in m.polygons if p.class_id == 3), key=lambda p: -len(
        p.holes))
    assert len(ring.holes) == 1 and len(ring.holes[0]) == 4 and island.holes == []
    hole = ring.holes[0]  # traced on the ring's pixels around rows 14-19, columns 16-25
    assert (labels[hole[:, 1], hole[:, 0]] == 3).all()
    assert (hole[:, 0] >= 15).all() and (hole[:, 0] <= 26).all()
    assert (hole[:, 1] >= 13).all() and (hole[:, 1] <= 20).all()
    assert cv2.pointPolygonTest(hole.reshape(-1, 1, 2), (21.0, 16.0), False) > 0
    assert by_class[4] == [pytest.approx(np.array([[20, 3]]))]  # one pixel: one point


def test_long_runs_switch_the_lengths_to_uint32():
    f = _frame(np.zeros((256, 320), np.uint8))  # one run of 81920 > 65535
    message = masks.encode(f, _classes("binary"))
    header = json.loads(message[1])
    assert header["labels"]["length_dtype"] == "uint32" and header["labels"]["runs"] == 1
    assert message[2] == b"\x00" and message[3] == (81920).to_bytes(4, "little")
    m = masks.decode(message)
    assert not m.labels.any() and m.polygons == []


def test_noise_round_trips():
    labels = np.random.default_rng(0).integers(0, 8, (64, 80), dtype=np.uint8)
    m = masks.decode(masks.encode(_frame(labels), _classes("types")))
    assert np.array_equal(m.labels, labels)


def test_frame_without_labels_still_goes_out():
    f = _frame(None)
    message = masks.encode(f, None)
    assert len(message) == 2
    header = json.loads(message[1])
    assert header["labels"] is None and header["polygons"] == [] and header["classes"] is None
    m = masks.decode(message)
    assert m.labels is None and m.region is None and m.polygons == []
    assert (m.seq, m.caption) == (42, f.caption)


def test_encode_refuses_labels_outside_the_class_table():
    labels = np.full((8, 8), 5, np.uint8)
    with pytest.raises(ValueError, match="class table"):
        masks.encode(_frame(labels), _classes("binary"))


def test_outlines_follow_the_instruments_in_image_pixels(synth_maps):
    """Every boundary pixel of every region (holes too) lies within about one label pixel (4
    image pixels at this scale) of an outline of its class; every vertex is on the region."""
    ry, rx, rh, rw = REGION_1080P
    for labels in synth_maps["parts"]:
        h, w = labels.shape
        m = masks.decode(masks.encode(_frame(labels), _classes("parts")))
        for class_id in set(np.unique(labels).tolist()) - {0}:
            mask = labels == class_id
            inner = np.zeros_like(mask)
            inner[1:-1, 1:-1] = (mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1]
                                 & mask[1:-1, :-2] & mask[1:-1, 2:])
            iy, ix = np.nonzero(mask & ~inner)  # the region's boundary pixels
            centres = np.stack([rx + (ix + 0.5) * rw / w, ry + (iy + 0.5) * rh / h], 1)
            polys = [outline for p in m.polygons if p.class_id == class_id
                     for outline in (p.points, *p.holes)]
            distance = np.full(len(centres), np.inf)
            for points in polys:
                contour = points.reshape(-1, 1, 2).astype(np.float32)
                if len(points) < 3:  # a dot or a line: distance to its points
                    d = np.linalg.norm(centres[:, None] - points[None], axis=2).min(1)
                else:
                    d = np.abs([cv2.pointPolygonTest(contour, (float(x), float(y)), True)
                                for x, y in centres])
                distance = np.minimum(distance, d)
                back = labels[(points[:, 1] - ry) * h // rh, (points[:, 0] - rx) * w // rw]
                assert (back == class_id).all(), "a vertex off its region"
            assert distance.max() <= 1.0 * rw / w + 2, f"class {class_id} outline strays"


# --------------------------------------------------------------------------- the page alone


def decode_by_the_page(message: list) -> dict:
    """A client written from PROTOCOL.md's "Mask-only stream" with json and numpy only."""
    header = json.loads(bytes(message[1]))
    assert header["v"] == 1 and header["kind"] == "mask"
    assert bytes(message[0]) == f"orstream/{header['stream']}/mask".encode()
    out = dict(header)
    desc = header["labels"]
    if desc is None:
        assert len(message) == 2
        return out
    h, w = desc["shape"]
    values = np.frombuffer(message[2], np.uint8)
    lengths = np.frombuffer(message[3], {"uint16": "<u2", "uint32": "<u4"}[
        desc["length_dtype"]])
    assert len(values) == len(lengths) == desc["runs"] and lengths.sum() == h * w
    out["labels"] = np.repeat(values, lengths).reshape(h, w)
    out["region"] = desc["region"]
    return out


def _image_class(labels: np.ndarray, region, height: int, width: int) -> np.ndarray:
    """The page's nearest-neighbour rule: the class of every image pixel."""
    h, w = labels.shape
    ry, rx, rh, rw = region
    y = np.arange(height)[:, None]
    x = np.arange(width)[None, :]
    inside = (y >= ry) & (y < ry + rh) & (x >= rx) & (x < rx + rw)
    i = np.clip((y - ry) * h // rh, 0, h - 1)
    j = np.clip((x - rx) * w // rw, 0, w - 1)
    return np.where(inside, labels[i, j], 0)


def test_a_client_with_only_pyzmq_json_and_numpy_decodes_the_stream(synth_maps, tmp_path):
    sent = [_frame(labels) for labels in synth_maps["types"]] + [_frame(None)]
    endpoint = f"ipc://{tmp_path}/masks"
    with zmq.Context() as ctx, ctx.socket(zmq.PULL) as pull, ctx.socket(zmq.PUSH) as push:
        pull.bind(endpoint)
        push.connect(endpoint)
        for f in sent:
            push.send_multipart(masks.encode(f, _classes("types")))
        got = []
        for _ in sent:
            assert pull.poll(5000), "no message within 5 s"
            got.append(decode_by_the_page(pull.recv_multipart(copy=False)))
    for f, g in zip(sent, got, strict=True):
        assert (g["stream"], g["seq"], g["t_capture_ns"]) == (f.stream, f.seq,
                                                              f.t_capture_ns)
        assert g["caption"]["text"] == f.caption.text
        if f.labels is None:
            assert g["labels"] is None and g["polygons"] == []
            continue
        assert np.array_equal(g["labels"], f.labels)
        names = g["classes"]["names"]
        assert all(v < len(names) for v in np.unique(g["labels"]))
        height, width = g["image"]
        full = _image_class(g["labels"], g["region"], height, width)
        edge = np.zeros((height, width), bool)  # image pixels next to another class
        edge[:-1] |= full[:-1] != full[1:]
        edge[1:] |= full[1:] != full[:-1]
        edge[:, :-1] |= full[:, :-1] != full[:, 1:]
        edge[:, 1:] |= full[:, 1:] != full[:, :-1]
        near = edge.copy()  # within one label pixel (4 image pixels) of an outline
        for _ in range(4):
            near[1:] |= near[:-1].copy()
            near[:-1] |= near[1:].copy()
            near[:, 1:] |= near[:, :-1].copy()
            near[:, :-1] |= near[:, 1:].copy()
        assert g["polygons"]
        for poly in g["polygons"]:
            for outline in (poly["points"], *poly.get("holes", [])):
                xy = np.array(outline)
                assert (full[xy[:, 1], xy[:, 0]] == poly["class"]).all()
                assert near[xy[:, 1], xy[:, 0]].all(), "a vertex away from the outline"


# --------------------------------------------------------------------------- size and speed


def test_mask_stream_is_under_a_hundredth_of_the_overlay_stream(synth_maps):
    for labels in synth_maps["types"]:
        f = _frame(labels)
        f.overlay = IMAGE_1080P
        full = masks.message_bytes(wire.encode(f, ("overlay",), _classes("types")))
        mask = masks.message_bytes(masks.encode(f, _classes("types")))
        assert full > 6_220_800
        assert mask * 100 < full and mask < 16_384, f"{mask} bytes a frame"


# --------------------------------------------------------------------------- rejection


def _valid() -> list[bytes]:
    labels = _hand_map()
    f = _frame(labels, region=(0, 0, 48, 64), image=np.zeros((48, 64, 3), np.uint8))
    return masks.encode(f, _classes("parts"))


def _with(header_changes: dict | None = None, labels_changes: dict | None = None,
          buffers: list[bytes] | None = None, topic: bytes | None = None) -> list[bytes]:
    message = _valid()
    header = json.loads(message[1])
    header.update(header_changes or {})
    if labels_changes:
        header["labels"].update(labels_changes)
    return [topic or message[0], json.dumps(header).encode(),
            *(message[2:] if buffers is None else buffers)]


def _runs() -> tuple[bytes, bytes]:
    message = _valid()
    return message[2], message[3]


def _bad_lengths(delta: int) -> list[bytes]:
    values, lengths = _runs()
    runs = np.frombuffer(lengths, "<u2").copy()
    runs[0] = int(runs[0]) + delta
    return [values, runs.tobytes()]


def _bad_value() -> list[bytes]:
    values, lengths = _runs()
    return [bytes([7]) + values[1:], lengths]


T = b"orstream/or-1/mask"
REJECTED = [
    ("one frame", [T], "bad_framing"),
    ("three frames", _valid()[:3], "bad_framing"),
    ("labels null with buffers", _with({"labels": None}), "bad_framing"),
    ("labels without buffers", _with(buffers=[]), "bad_framing"),
    ("not json", [T, b"{not json"], "bad_json"),
    ("json list", [T, b"[1, 2]"], "bad_json"),
    ("not utf-8", [T, b"\xff\xfe{}"], "bad_json"),
    ("NaN", [T, b'{"v": 1, "media_s": NaN}'], "bad_json"),
    ("trailing data", [T, b'{"v": 1} {}'], "bad_json"),
    ("deep nesting", [T, b"[" * 100_000], "bad_json"),
    ("huge integer", [T, b'{"v": ' + b"9" * 5000 + b"}"], "bad_json"),
    ("version 2", _with({"v": 2}), "bad_version"),
    ("version true", _with({"v": True}), "bad_version"),
    ("version 1.0", _with({"v": 1.0}), "bad_version"),
    ("frame kind", _with({"kind": "frame"}), "bad_kind"),
    ("no kind", _with({"kind": None}), "bad_kind"),
    ("seq string", _with({"seq": "42"}), "bad_header"),
    ("seq negative", _with({"seq": -1}), "bad_header"),
    ("seq bool", _with({"seq": True}), "bad_header"),
    ("t_send_ns missing", _with({"t_send_ns": None}), "bad_header"),
    ("stream bad", _with({"stream": "or 1/x"}), "bad_header"),
    ("image size zero", _with({"image": [0, 64]}), "bad_header"),
    ("image size 1-d", _with({"image": [48]}), "bad_header"),
    ("media_s string", _with({"media_s": "1"}), "bad_header"),
    # math.isfinite of a 401-digit integer raised OverflowError out of the decoder (fuzzing)
    ("media_s beyond a float", _with({"media_s": 10 ** 400}), "bad_header"),
    ("caption", _with({"caption": {"text": "x"}}), "bad_header"),
    ("trace", _with({"trace": [["capture", 1]]}), "bad_header"),
    ("classes colors", _with({"classes": {"task": "parts", "names": ["a", "b"],
                                          "colors": [[0, 0, 0]]}}), "bad_header"),
    ("classes color 256", _with({"classes": {"task": "parts", "names": ["a"],
                                             "colors": [[0, 0, 256]]}}), "bad_header"),
    ("labels missing", [T, json.dumps({k: v for k, v in json.loads(_valid()[1]).items()
                                       if k != "labels"}).encode()], "bad_header"),
    ("topic of another stream", _with(topic=b"orstream/or-2/mask"), "bad_topic"),
    ("topic of the frame stream", _with(topic=b"orstream/or-1/frame"), "bad_topic"),
    ("labels not an object", _with({"labels": [24, 32]}), "bad_labels"),
    ("png", _with(labels_changes={"encoding": "png"}), "bad_labels"),
    ("shape 1-d", _with(labels_changes={"shape": [768]}), "bad_labels"),
    ("shape zero", _with(labels_changes={"shape": [0, 32]}), "bad_labels"),
    ("region short", _with(labels_changes={"region": [0, 0, 48]}), "bad_labels"),
    ("region empty", _with(labels_changes={"region": [0, 0, 0, 64]}), "bad_labels"),
    ("region float", _with(labels_changes={"region": [0, 0, 48.0, 64]}), "bad_labels"),
    ("runs zero", _with(labels_changes={"runs": 0}), "bad_labels"),
    ("runs string", _with(labels_changes={"runs": "9"}), "bad_labels"),
    ("length dtype", _with(labels_changes={"length_dtype": "uint8"}), "bad_labels"),
    ("values short", _with(buffers=[_runs()[0][:-1], _runs()[1]]), "bad_length"),
    ("lengths odd bytes", _with(buffers=[_runs()[0], _runs()[1] + b"\x00"]), "bad_length"),
    ("lengths count", _with(buffers=[_runs()[0], _runs()[1] + b"\x00\x00"]), "bad_length"),
    ("runs count", _with(labels_changes={"runs": 3}), "bad_length"),
    ("runs sum over", _with(buffers=_bad_lengths(+1)), "bad_runs"),
    ("runs sum under", _with(buffers=_bad_lengths(-1)), "bad_runs"),
    ("map over shape", _with(labels_changes={"shape": [32, 32]}), "bad_runs"),
    ("value past classes", _with(buffers=_bad_value()), "bad_class"),
    ("polygon class 0", _with({"polygons": [{"class": 0, "points": [[1, 1]]}]}), "bad_class"),
    ("polygon class 5", _with({"polygons": [{"class": 5, "points": [[1, 1]]}]}), "bad_class"),
    ("polygons not list", _with({"polygons": {"class": 1}}), "bad_polygon"),
    ("polygons missing", _with({"polygons": None}), "bad_polygon"),
    ("polygon not object", _with({"polygons": [[1, 1]]}), "bad_polygon"),
    ("no points", _with({"polygons": [{"class": 1, "points": []}]}), "bad_polygon"),
    ("point 1-d", _with({"polygons": [{"class": 1, "points": [[1]]}]}), "bad_polygon"),
    ("point float", _with({"polygons": [{"class": 1, "points": [[1.5, 1]]}]}), "bad_polygon"),
    ("point outside", _with({"polygons": [{"class": 1, "points": [[64, 1]]}]}),
     "bad_polygon"),
    ("point negative", _with({"polygons": [{"class": 1, "points": [[1, -1]]}]}),
     "bad_polygon"),
    ("holes not list", _with({"polygons": [{"class": 1, "points": [[1, 1]], "holes": 3}]}),
     "bad_polygon"),
    ("hole empty", _with({"polygons": [{"class": 1, "points": [[1, 1]], "holes": [[]]}]}),
     "bad_polygon"),
    ("hole point outside", _with({"polygons": [{"class": 1, "points": [[1, 1]],
                                                "holes": [[[1, 48]]]}]}), "bad_polygon"),
    ("polygons without labels", _with({"labels": None}, buffers=[]), "bad_polygon"),
]


@pytest.mark.parametrize(("message", "reason"), [r[1:] for r in REJECTED],
                         ids=[r[0] for r in REJECTED])
def test_invalid_messages_are_rejected_with_a_reason(message, reason):
    with pytest.raises(wire.WireError) as err:
        masks.decode(message)
    assert err.value.reason == reason


def test_oversize_is_rejected_before_parsing_and_huge_maps_before_allocating():
    with pytest.raises(wire.WireError) as err:
        masks.decode([T, b"{}", bytes(2048), bytes(2)], max_bytes=1024)
    assert err.value.reason == "oversize"
    # Runs that sum to 10^10 pixels: refused on the header's numbers, never allocated.
    side = 100_000
    lengths = np.full(4, side * side // 4, "<u4").tobytes()
    message = _with(labels_changes={"shape": [side, side], "runs": 4, "length_dtype": "uint32"},
                    buffers=[bytes(4), lengths])
    with pytest.raises(wire.WireError) as err:
        masks.decode(message)
    assert err.value.reason == "oversize"


def test_hostile_bytes_never_crash_the_decoder():
    rng = np.random.default_rng(1)
    valid = _valid()
    reasons = set()
    for _ in range(3000):
        message = [bytearray(part) for part in valid]
        for _ in range(rng.integers(1, 4)):
            part = message[rng.integers(0, len(message))]
            if len(part) and rng.random() < 0.7:
                part[rng.integers(0, len(part))] = rng.integers(0, 256)
            else:
                del part[rng.integers(0, len(part) + 1):]
        try:
            m = masks.decode([bytes(p) for p in message])
        except wire.WireError as exc:
            reasons.add(exc.reason)
        else:
            assert m.labels is None or m.labels.size == np.prod(m.labels.shape)
    assert {"bad_json", "bad_runs", "bad_length"} <= reasons
