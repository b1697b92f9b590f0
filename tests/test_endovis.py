"""Tests for training.datasets.endovis on tiny EndoVis 2017/2018 trees written into tmp_path."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from orstream.training.datasets import endovis
from orstream.training.datasets.endovis import (
    STANDARD_CROP,
    TERNAUSNET_FOLDS,
    DatasetError,
    Sample,
    detect_layout,
    discover,
    load_sample,
    read_image,
    read_label,
    split_by_fold,
    standard_crop,
    validate,
)

H, W = 64, 80

# Folder names as inconsistent as in the real archives; the comment gives the type id they map to.
BIPOLAR = "Left_Bipolar_Forceps"  # 1, no _labels suffix, side prefix
PROGRASP = "Prograsp_Forceps"  # 2, no _labels suffix
SEALER = "Right_Vessel_Sealer_labels"  # 4
OTHER = "Other_labels"  # 7
FOLDERS = (BIPOLAR, PROGRASP, SEALER, OTHER)


def _write(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array), path
    return path


def _rgb_frame(seed: int, h: int = H, w: int = W) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _masks_2017() -> dict[str, np.ndarray]:
    """Per-folder part masks (EndoVis pixel values) with two pairs of overlapping instruments."""
    m = {name: np.zeros((H, W), np.uint8) for name in FOLDERS}
    m[BIPOLAR][5:25, 5:30] = 10  # shaft
    m[BIPOLAR][5:10, 5:30] = 20  # wrist
    m[PROGRASP][20:40, 20:50] = 30  # clasper, overlaps the bipolar at rows 20:25, cols 20:30
    m[SEALER][45:60, 60:75] = 40  # probe
    m[OTHER][50:60, 55:70] = 10  # overlaps the sealer at rows 50:60, cols 60:70
    return m


def _expected_2017(task: str) -> np.ndarray:
    """Hand-written composition: where masks overlap, the higher type id wins."""
    e = np.zeros((H, W), np.uint8)
    if task == "binary":
        for rows, cols in [
            (slice(5, 25), slice(5, 30)),
            (slice(20, 40), slice(20, 50)),
            (slice(45, 60), slice(60, 75)),
            (slice(50, 60), slice(55, 70)),
        ]:
            e[rows, cols] = 1
    elif task == "parts":
        e[5:25, 5:30] = 1
        e[5:10, 5:30] = 2
        e[20:40, 20:50] = 3
        e[45:60, 60:75] = 4
        e[50:60, 55:70] = 1  # Other (type 7) is composed after the sealer (type 4)
    else:
        e[5:25, 5:30] = 1
        e[20:40, 20:50] = 2
        e[45:60, 60:75] = 4
        e[50:60, 55:70] = 7
    return e


def make_2017(
    root: Path,
    videos: tuple[int, ...] = (1,),
    frames: int = 2,
    folders: tuple[str, ...] = FOLDERS,
) -> Path:
    """EndoVis 2017 tree: frame000 has the overlapping masks, later frames have no instruments."""
    masks = _masks_2017()
    for v in videos:
        video = root / f"instrument_dataset_{v}"
        for f in range(frames):
            _write(video / "left_frames" / f"frame{f:03d}.png", _rgb_frame(100 * v + f)[..., ::-1])
            for name in folders:
                blank = np.zeros((H, W), np.uint8)  # "Camera_labels" etc. and later frames
                mask = masks.get(name, blank) if f == 0 else blank
                _write(video / "ground_truth" / name / f"frame{f:03d}.png", mask)
    return root


# EndoVis 2018 default colours used by the fixture, with their expected binary and parts ids.
COLOURS_2018 = {
    "background-tissue": ((0, 0, 0), 0, 0),
    "instrument-shaft": ((0, 255, 0), 1, 1),
    "instrument-wrist": ((125, 255, 12), 1, 2),
    "instrument-clasper": ((0, 255, 255), 1, 3),
    "kidney-parenchyma": ((255, 55, 0), 0, 0),
    "suturing-needle": ((255, 255, 125), 0, 0),
    "ultrasound-probe": ((12, 255, 141), 0, 0),
}


def _label_2018(colours: dict[str, tuple[int, int, int]]) -> tuple[np.ndarray, dict[str, tuple]]:
    """RGB label with one 8-row band per class; returns it and the band of each class."""
    label = np.zeros((H, W, 3), np.uint8)
    bands = {}
    for i, (name, rgb) in enumerate(colours.items()):
        bands[name] = (slice(8 * i, 8 * i + 8), slice(0, W))
        label[bands[name]] = rgb
    return label, bands


def make_2018(root: Path, seqs: tuple[int, ...] = (1,), frames: int = 1) -> Path:
    colours = {name: rgb for name, (rgb, _, _) in COLOURS_2018.items()}
    label, _ = _label_2018(colours)
    for s in seqs:
        seq = root / f"seq_{s}"
        for f in range(frames):
            _write(seq / "left_frames" / f"frame{f:03d}.png", _rgb_frame(s + f)[..., ::-1])
            _write(seq / "labels" / f"frame{f:03d}.png", label[..., ::-1])  # cv2 writes BGR
    return root


def _raises(path: object, exc: type[Exception] = DatasetError):
    return pytest.raises(exc, match=re.escape(str(path)))


# ------------------------------------------------------------------ layout and discovery


def test_detect_layout_direct_and_nested(tmp_path: Path) -> None:
    assert detect_layout(make_2017(tmp_path / "a")) == "endovis2017"
    assert detect_layout(make_2018(tmp_path / "b")) == "endovis2018"
    # The official 2017 training archive unpacks one level down.
    make_2017(tmp_path / "c" / "instrument_1_4_training", videos=(1,), frames=1)
    make_2017(tmp_path / "c" / "instrument_5_8_training", videos=(5,), frames=1)
    assert detect_layout(tmp_path / "c") == "endovis2017"
    assert [s.video_id for s in discover(tmp_path / "c", "binary")] == [1, 5]


def test_discover_2017_sorted_with_type_ordered_labels(tmp_path: Path) -> None:
    root = make_2017(tmp_path, videos=(10, 2, 1), frames=2)
    samples = discover(root, "types")
    assert [(s.video_id, s.frame) for s in samples] == [
        (v, f"frame{f:03d}") for v in (1, 2, 10) for f in range(2)
    ]
    s = samples[2]
    assert s.layout == "endovis2017"
    assert s.video == "instrument_dataset_2"
    assert s.image_path == root / "instrument_dataset_2" / "left_frames" / "frame000.png"
    # Ordered by type id (1, 2, 4, 7), not alphabetically.
    assert [p.parent.name for p in s.label_paths] == [BIPOLAR, PROGRASP, SEALER, OTHER]
    assert all(p.name == "frame000.png" for p in s.label_paths)


def test_discover_filters_videos(tmp_path: Path) -> None:
    root = make_2017(tmp_path, videos=(1, 2, 3), frames=1)
    assert [s.video_id for s in discover(root, "binary", videos=[3, 1])] == [1, 3]
    with pytest.raises(DatasetError, match=r"\[99\]"):
        discover(root, "binary", videos=[99])


# ------------------------------------------------------------------ 2017 labels and images


@pytest.mark.parametrize("task", ["binary", "parts", "types"])
def test_2017_composed_label_is_pixel_exact(tmp_path: Path, task: str) -> None:
    samples = discover(make_2017(tmp_path, frames=2), task)
    label = read_label(samples[0], task)
    assert label.dtype == np.uint8
    np.testing.assert_array_equal(label, _expected_2017(task))
    # Frame without instruments: every mask is zero, so is the label.
    np.testing.assert_array_equal(read_label(samples[1], task), np.zeros((H, W), np.uint8))


def test_2017_overlap_winner_is_higher_type_id(tmp_path: Path) -> None:
    (sample, *_) = discover(make_2017(tmp_path, frames=1), "types")
    types, parts = read_label(sample, "types"), read_label(sample, "parts")
    assert (types[22, 25], parts[22, 25]) == (2, 3)  # prograsp clasper over bipolar shaft
    assert (types[55, 65], parts[55, 65]) == (7, 1)  # "Other" over the vessel sealer's probe


def test_read_image_is_rgb(tmp_path: Path) -> None:
    rgb = _rgb_frame(7)
    path = _write(tmp_path / "x.png", rgb[..., ::-1])
    image = read_image(path)
    assert image.dtype == np.uint8 and image.shape == (H, W, 3)
    np.testing.assert_array_equal(image, rgb)


def test_load_sample_2017_small_frame_is_not_cropped(tmp_path: Path) -> None:
    (sample, *_) = discover(make_2017(tmp_path, frames=1), "parts")
    image, label = load_sample(sample, "parts")
    np.testing.assert_array_equal(image, _rgb_frame(100))
    np.testing.assert_array_equal(label, _expected_2017("parts"))


def test_mask_with_three_equal_channels_is_accepted(tmp_path: Path) -> None:
    root = make_2017(tmp_path, frames=1, folders=(BIPOLAR,))
    mask_path = root / "instrument_dataset_1" / "ground_truth" / BIPOLAR / "frame000.png"
    grey = _masks_2017()[BIPOLAR]
    _write(mask_path, np.dstack([grey] * 3))
    (sample,) = discover(root, "parts")
    expected = np.zeros((H, W), np.uint8)
    expected[5:25, 5:30] = 1
    expected[5:10, 5:30] = 2
    np.testing.assert_array_equal(read_label(sample, "parts"), expected)

    colour = np.dstack([grey, grey, np.zeros_like(grey)])
    _write(mask_path, colour)
    with _raises(mask_path):
        read_label(sample, "parts")


# ------------------------------------------------------------------ standard crop


def test_standard_crop_moves_marker_to_origin() -> None:
    row, col, height, width = STANDARD_CROP
    assert (row, col, height, width) == (28, 320, 1024, 1280)
    a = np.zeros((1080, 1920, 3), np.uint8)
    a[28, 320] = (1, 2, 3)
    a[27, 320] = a[28, 319] = 9  # just outside the crop
    a[28 + 1023, 320 + 1279] = 5  # last pixel inside
    out = standard_crop(a)
    assert out.shape == (1024, 1280, 3)
    assert tuple(out[0, 0]) == (1, 2, 3)
    assert tuple(out[-1, -1]) == (5, 5, 5)
    assert (out == 9).sum() == 0
    small = np.zeros((H, W), np.uint8)
    assert standard_crop(small) is small


def test_load_sample_crops_full_hd_frame_and_label(tmp_path: Path) -> None:
    video = tmp_path / "instrument_dataset_1"
    image = np.zeros((1080, 1920, 3), np.uint8)
    image[28, 320] = (200, 100, 50)  # RGB marker
    mask = np.zeros((1080, 1920), np.uint8)
    mask[28, 320] = 30
    mask[27, 319] = 10  # cropped away
    _write(video / "left_frames" / "frame000.png", image[..., ::-1])
    _write(video / "ground_truth" / "Monopolar_Curved_Scissors_labels" / "frame000.png", mask)
    (sample,) = discover(tmp_path, "parts")
    img, label = load_sample(sample, "parts")
    assert img.shape == (1024, 1280, 3) and label.shape == (1024, 1280)
    assert tuple(img[0, 0]) == (200, 100, 50)
    assert label[0, 0] == 3
    assert int(label.sum()) == 3  # the shaft pixel outside the crop is gone


# ------------------------------------------------------------------ 2018


@pytest.mark.parametrize("task", ["binary", "parts"])
def test_2018_default_table_decoding(tmp_path: Path, task: str) -> None:
    (sample,) = discover(make_2018(tmp_path), task)
    assert sample.layout == "endovis2018" and sample.video == "seq_1" and sample.video_id == 1
    assert sample.label_paths == (tmp_path / "seq_1" / "labels" / "frame000.png",)
    _, bands = _label_2018({n: c for n, (c, _, _) in COLOURS_2018.items()})
    expected = np.zeros((H, W), np.uint8)
    for name, (_, binary_id, parts_id) in COLOURS_2018.items():
        expected[bands[name]] = binary_id if task == "binary" else parts_id
    image, label = load_sample(sample, task)
    np.testing.assert_array_equal(label, expected)
    np.testing.assert_array_equal(image, _rgb_frame(1))


def _write_table(path: Path, colours: dict[str, tuple[int, int, int]]) -> None:
    entries = [
        {"name": n, "color": list(c), "classid": i} for i, (n, c) in enumerate(colours.items())
    ]
    path.write_text(json.dumps(entries))


def test_2018_labels_json_root_and_sequence_override(tmp_path: Path) -> None:
    root_table = {"bg": (0, 0, 0), "instrument-shaft": (10, 20, 30), "instrument-wrist": (1, 1, 1)}
    seq_table = {"bg": (0, 0, 0), "instrument-clasper": (40, 50, 60)}
    label = np.zeros((H, W, 3), np.uint8)
    label[0:10] = (10, 20, 30)
    label[10:20] = (1, 1, 1)
    for s in (1, 2):
        _write(tmp_path / f"seq_{s}" / "left_frames" / "frame000.png", _rgb_frame(s))
    _write(tmp_path / "seq_1" / "labels" / "frame000.png", label[..., ::-1])
    seq2_label = np.zeros((H, W, 3), np.uint8)
    seq2_label[30:40] = (40, 50, 60)
    _write(tmp_path / "seq_2" / "labels" / "frame000.png", seq2_label[..., ::-1])
    _write_table(tmp_path / "labels.json", root_table)
    _write_table(tmp_path / "seq_2" / "labels.json", seq_table)

    s1, s2 = discover(tmp_path, "parts")
    parts1 = read_label(s1, "parts")
    assert (parts1[0:10] == 1).all() and (parts1[10:20] == 2).all() and (parts1[20:] == 0).all()
    parts2 = read_label(s2, "parts")
    assert (parts2[30:40] == 3).all() and int(parts2.sum()) == 3 * 10 * W
    # seq_2's own table has no shaft colour, so a root-table colour there is unknown.
    seq2_label[0, 0] = (10, 20, 30)
    _write(s2.label_paths[0], seq2_label[..., ::-1])
    with _raises(s2.label_paths[0]):
        read_label(s2, "binary")
    # An explicit table overrides both files.
    explicit = {"bg": (0, 0, 0), "instrument-wrist": (10, 20, 30), "instrument-shaft": (40, 50, 60)}
    parts2 = read_label(s2, "parts", class_table_2018=explicit)
    assert parts2[0, 0] == 2 and (parts2[30:40] == 1).all()


# ------------------------------------------------------------------ folds


def _fake_samples(videos: range, frames: int = 3) -> list[Sample]:
    return [
        Sample("endovis2017", f"instrument_dataset_{v}", v, f"frame{f:03d}", Path(f"{v}/{f}"), ())
        for v in videos
        for f in range(frames)
    ]


@pytest.mark.parametrize("fold", sorted(TERNAUSNET_FOLDS))
def test_split_by_fold_holds_out_whole_videos(fold: int) -> None:
    samples = _fake_samples(range(1, 9))
    train, val = split_by_fold(samples, fold)
    assert {s.video_id for s in val} == set(TERNAUSNET_FOLDS[fold])
    assert {s.video_id for s in train} == set(range(1, 9)) - set(TERNAUSNET_FOLDS[fold])
    assert len(val) == 2 * 3 and len(train) == 6 * 3
    assert set(train).isdisjoint(val)


def test_folds_cover_each_video_once_and_reject_unknown_fold() -> None:
    held_out = sorted(v for pair in TERNAUSNET_FOLDS.values() for v in pair)
    assert held_out == list(range(1, 9))
    with pytest.raises(ValueError, match="0, 1, 2, 3"):
        split_by_fold(_fake_samples(range(1, 9)), 4)
    with pytest.raises(DatasetError, match="no validation"):
        split_by_fold(_fake_samples(range(2, 3)), 0)


# ------------------------------------------------------------------ validate


def test_validate_passes_and_finds_a_corrupt_frame(tmp_path: Path) -> None:
    root = make_2017(tmp_path, videos=(1, 2), frames=2)
    samples = discover(root, "types")
    validate(samples, "types")
    bad = samples[3].image_path
    bad.write_bytes(b"definitely not a png")
    with _raises(bad):
        validate(samples, "types")


def test_validate_max_check_reads_evenly_spaced_subset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    samples = _fake_samples(range(1, 5), frames=2)  # 8 samples, nothing on disk
    seen: list[Sample] = []
    monkeypatch.setattr(endovis, "load_sample", lambda s, task: seen.append(s))
    validate(samples, "binary", max_check=3)
    assert [samples.index(s) for s in seen] == [0, 4, 7]
    with pytest.raises(DatasetError):
        validate([], "binary")


# ------------------------------------------------------------------ bad inputs


def test_empty_and_missing_root(tmp_path: Path) -> None:
    with _raises(tmp_path):
        detect_layout(tmp_path)
    with _raises(tmp_path):
        discover(tmp_path, "binary")
    missing = tmp_path / "nope"
    with _raises(missing):
        detect_layout(missing)


def test_unknown_layout_names_root_found_and_expected(tmp_path: Path) -> None:
    (tmp_path / "videos").mkdir()
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DatasetError) as info:
        detect_layout(tmp_path)
    msg = str(info.value)
    assert str(tmp_path) in msg and "videos/" in msg and "readme.txt" in msg
    assert "instrument_dataset_N" in msg and "seq_N" in msg


def test_unreadable_png_frame_and_mask(tmp_path: Path) -> None:
    root = make_2017(tmp_path, frames=1)
    (sample,) = discover(root, "binary")
    sample.label_paths[1].write_bytes(b"\x89PNG garbage")
    with _raises(sample.label_paths[1]):
        load_sample(sample, "binary")
    sample.image_path.write_bytes(b"garbage bytes")
    with _raises(sample.image_path):
        read_image(sample.image_path)


def test_image_and_mask_size_mismatch(tmp_path: Path) -> None:
    root = make_2017(tmp_path, frames=1, folders=(BIPOLAR,))
    (sample,) = discover(root, "binary")
    _write(sample.label_paths[0], np.zeros((H, W + 1), np.uint8))
    with pytest.raises(DatasetError) as info:
        load_sample(sample, "binary")
    msg = str(info.value)
    assert str(sample.image_path) in msg and str(sample.label_paths[0]) in msg
    assert f"{H}x{W}" in msg and f"{H}x{W + 1}" in msg


def test_masks_of_one_frame_with_different_sizes(tmp_path: Path) -> None:
    root = make_2017(tmp_path, frames=1, folders=(BIPOLAR, PROGRASP))
    (sample,) = discover(root, "binary")
    _write(sample.label_paths[1], np.zeros((H + 2, W), np.uint8))
    with _raises(sample.label_paths[1]):
        read_label(sample, "binary")


def test_mask_with_unexpected_values(tmp_path: Path) -> None:
    root = make_2017(tmp_path, frames=1, folders=(BIPOLAR,))
    (sample,) = discover(root, "parts")
    mask = _masks_2017()[BIPOLAR]
    mask[0, 0], mask[0, 1] = 7, 255
    _write(sample.label_paths[0], mask)
    with pytest.raises(DatasetError) as info:
        read_label(sample, "parts")
    msg = str(info.value)
    assert str(sample.label_paths[0]) in msg and "[7, 255]" in msg and "[0, 10, 20, 30, 40]" in msg


def test_missing_mask_file_and_orphan_mask(tmp_path: Path) -> None:
    root = make_2017(tmp_path, frames=2)
    missing = root / "instrument_dataset_1" / "ground_truth" / SEALER / "frame001.png"
    missing.unlink()
    with _raises(missing):
        discover(root, "binary")
    _write(missing, np.zeros((H, W), np.uint8))
    orphan = root / "instrument_dataset_1" / "ground_truth" / OTHER / "frame009.png"
    _write(orphan, np.zeros((H, W), np.uint8))
    with _raises(orphan):
        discover(root, "binary")


def test_unknown_ground_truth_folder_and_missing_ground_truth(tmp_path: Path) -> None:
    root = make_2017(tmp_path, frames=1, folders=(BIPOLAR, "Camera_labels"))
    with _raises("Camera_labels"):
        discover(root, "types")
    other = make_2017(tmp_path / "other", frames=1)
    gt = other / "instrument_dataset_1" / "ground_truth"
    shutil.rmtree(gt)
    with _raises(gt):
        discover(other, "binary")


def test_2018_with_types_is_rejected(tmp_path: Path) -> None:
    root = make_2018(tmp_path)
    with pytest.raises(DatasetError, match="no instrument types") as info:
        discover(root, "types")
    assert str(root) in str(info.value)
    (sample,) = discover(root, "parts")
    with _raises(sample.label_paths[0]):
        read_label(sample, "types")


def test_2018_unknown_colour(tmp_path: Path) -> None:
    root = make_2018(tmp_path)
    (sample,) = discover(root, "binary")
    label = np.zeros((H, W, 3), np.uint8)
    label[3, 4] = (1, 2, 3)  # RGB, written as BGR below
    _write(sample.label_paths[0], label[..., ::-1])
    with pytest.raises(DatasetError) as info:
        read_label(sample, "binary")
    msg = str(info.value)
    assert str(sample.label_paths[0]) in msg and "RGB(1, 2, 3)" in msg and "row 3, col 4" in msg


def test_2018_frame_without_label_and_bad_labels_json(tmp_path: Path) -> None:
    root = make_2018(tmp_path, frames=2)
    label = root / "seq_1" / "labels" / "frame001.png"
    label.unlink()
    with _raises(root / "seq_1" / "left_frames" / "frame001.png"):
        discover(root, "binary")
    make_2018(tmp_path, frames=2)
    table = root / "labels.json"
    table.write_text('{"not": "a list"}')
    (sample, _) = discover(root, "binary")
    with _raises(table):
        read_label(sample, "binary")
