"""Loaders for the EndoVis 2017 and EndoVis 2018 robotic instrument segmentation layouts.

Both challenges ship as folders of PNGs rather than a manifest, and the archives are not
consistent (label folder names vary, frames are 1080x1920 with a black border in 2017, labels are
colour-coded RGB in 2018). This module turns such a folder into a sorted list of `Sample`s and
reads each one as an RGB image plus a uint8 label map for one of the tasks defined in
`common.classes` ("binary", "parts", "types").

EndoVis 2017 (also written by the project's synthetic generator)::

    ROOT/instrument_dataset_N/left_frames/frameNNN.png
    ROOT/instrument_dataset_N/ground_truth/<Instrument>_labels/frameNNN.png   (one per instrument)

EndoVis 2018::

    ROOT/seq_N/left_frames/frameNNN.png
    ROOT/seq_N/labels/frameNNN.png        (RGB, colours from labels.json or the default table)

Everything that can be wrong with the data raises `DatasetError` with the offending path and
what was expected, so that a bad archive stops a run before training starts (see `validate`)
instead of surfacing as a shape error or silently wrong labels hours later.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from loguru import logger

from orstream.common.classes import ENDOVIS17_PART_VALUES, Task, check_task, type_id_for_folder
from orstream.common.crop import FULL_HD, STANDARD_CROP
from orstream.common.errors import UsageError

__all__ = [
    "DEFAULT_CLASS_TABLE_2018",
    "LAYOUT_2017",
    "LAYOUT_2018",
    "STANDARD_CROP",
    "TERNAUSNET_FOLDS",
    "DatasetError",
    "Sample",
    "detect_layout",
    "discover",
    "load_class_table_2018",
    "load_sample",
    "read_image",
    "read_label",
    "split_by_fold",
    "standard_crop",
    "validate",
]

LAYOUT_2017 = "endovis2017"
LAYOUT_2018 = "endovis2018"

_DIR_2017 = re.compile(r"^instrument_dataset_(\d+)$")
_DIR_2018 = re.compile(r"^seq_(\d+)$")
_EXPECTED_LAYOUTS = (
    "expected the EndoVis 2017 layout ROOT/instrument_dataset_N/{left_frames,ground_truth}/ or "
    "the EndoVis 2018 layout ROOT/seq_N/{left_frames,labels}/ (directly in ROOT or one level down)"
)


# TernausNet's 4-fold cross-validation on EndoVis 2017: whole videos are held out, so that frames
# of one video (which are nearly identical) never sit on both sides of a split.
TERNAUSNET_FOLDS: dict[int, tuple[int, int]] = {0: (1, 3), 1: (2, 5), 2: (4, 8), 3: (6, 7)}

# EndoVis 2018 class colours (name -> RGB) as published with the challenge data.
DEFAULT_CLASS_TABLE_2018: dict[str, tuple[int, int, int]] = {
    "background-tissue": (0, 0, 0),
    "instrument-shaft": (0, 255, 0),
    "instrument-clasper": (0, 255, 255),
    "instrument-wrist": (125, 255, 12),
    "kidney-parenchyma": (255, 55, 0),
    "covered-kidney": (24, 55, 125),
    "thread": (187, 155, 25),
    "clamps": (0, 255, 125),
    "suturing-needle": (255, 255, 125),
    "suction-instrument": (123, 15, 175),
    "small-intestine": (124, 155, 5),
    "ultrasound-probe": (12, 255, 141),
}
# 2018 classes are mapped by name, not by labels.json's classid, so that a table with its own
# numbering still works; parts ids match common.classes, every other class is background.
_PARTS_2018: dict[str, int] = {
    "instrument-shaft": 1,
    "instrument-wrist": 2,
    "instrument-clasper": 3,
}

_MASK_VALUES_2017 = (0, *sorted(ENDOVIS17_PART_VALUES))
_IMAGE_SUFFIXES = (".png",)


class DatasetError(UsageError):
    """The dataset on disk is missing, malformed or inconsistent; the message names the path."""


@dataclass(frozen=True)
class Sample:
    """One frame of a video together with the files its label is built from."""

    layout: str  # LAYOUT_2017 | LAYOUT_2018
    video: str  # directory name, e.g. "instrument_dataset_3" or "seq_2"
    video_id: int  # N from the directory name
    frame: str  # file stem, e.g. "frame007"
    image_path: Path
    label_paths: tuple[Path, ...]  # 2017: one mask per ground_truth folder; 2018: one RGB png


# --------------------------------------------------------------------------------------------
# Layout discovery
# --------------------------------------------------------------------------------------------


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"dataset root {root} does not exist; {_EXPECTED_LAYOUTS}")
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} is not a directory; {_EXPECTED_LAYOUTS}")
    return root


def _visible_children(directory: Path) -> list[Path]:
    # Hidden entries (.DS_Store, ._* files from macOS archives) are never part of the dataset.
    return sorted(p for p in directory.iterdir() if not p.name.startswith("."))


def _video_dirs(root: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """Video directories matching `pattern` directly in root or one level down.

    One level down because the official 2017 training data unpacks into
    instrument_1_4_training/ and instrument_5_8_training/, and 2018 into release folders.
    """
    found: dict[int, Path] = {}
    candidates = [p for p in _visible_children(root) if p.is_dir()]
    nested = [c for d in candidates if not pattern.match(d.name) for c in _visible_children(d)]
    for path in candidates + nested:
        m = pattern.match(path.name)
        if m is None or not path.is_dir():
            continue
        video_id = int(m.group(1))
        if video_id in found:
            raise DatasetError(
                f"video id {video_id} appears twice under {root}: {found[video_id]} and {path}; "
                "expected each video directory once"
            )
        found[video_id] = path
    return sorted(found.items())


def detect_layout(root: Path) -> str:
    """Return LAYOUT_2017 or LAYOUT_2018 for the dataset at `root`, else raise DatasetError."""
    root = _check_root(root)
    children = _visible_children(root)
    if not children:
        raise DatasetError(f"dataset root {root} is empty; {_EXPECTED_LAYOUTS}")
    has_2017 = bool(_video_dirs(root, _DIR_2017))
    has_2018 = bool(_video_dirs(root, _DIR_2018))
    if has_2017 and has_2018:
        raise DatasetError(
            f"dataset root {root} holds both instrument_dataset_N and seq_N directories; "
            "expected one layout per root"
        )
    if has_2017:
        return LAYOUT_2017
    if has_2018:
        return LAYOUT_2018
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in children[:10])
    more = f" and {len(children) - 10} more" if len(children) > 10 else ""
    raise DatasetError(
        f"dataset root {root} has an unknown layout: found {shown}{more}; {_EXPECTED_LAYOUTS}"
    )


def _natural_key(stem: str) -> tuple[object, ...]:
    # frame9 before frame10 even if an archive forgot the zero padding.
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", stem))


def _png_stems(directory: Path) -> dict[str, Path]:
    if not directory.is_dir():
        raise DatasetError(f"expected directory {directory} does not exist")
    return {
        p.stem: p
        for p in _visible_children(directory)
        if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES
    }


def _match_stems(
    frames: dict[str, Path], labels: dict[str, Path], frame_dir: Path, label_dir: Path
) -> None:
    """Frames and labels pair by file stem; any unpaired file is an error naming it."""
    unlabelled = sorted(frames.keys() - labels.keys(), key=_natural_key)
    if unlabelled:
        stem = unlabelled[0]
        raise DatasetError(
            f"frame {frames[stem]} has no label: expected {label_dir / (stem + '.png')}"
            f" ({len(unlabelled)} frames without a label in {label_dir})"
        )
    orphans = sorted(labels.keys() - frames.keys(), key=_natural_key)
    if orphans:
        stem = orphans[0]
        raise DatasetError(
            f"label {labels[stem]} has no frame: expected {frame_dir / (stem + '.png')}"
            f" ({len(orphans)} labels without a frame in {label_dir})"
        )


def _gt_folders_2017(video_dir: Path) -> list[tuple[int, Path]]:
    """Ground-truth folders of a 2017 video with their type ids, in compositing order."""
    gt_dir = video_dir / "ground_truth"
    if not gt_dir.is_dir():
        raise DatasetError(
            f"expected directory {gt_dir} does not exist (EndoVis 2017 videos need "
            "ground_truth/<Instrument>_labels/ folders)"
        )
    folders: list[tuple[int, Path]] = []
    for folder in _visible_children(gt_dir):
        if not folder.is_dir():
            continue
        type_id = type_id_for_folder(folder.name)
        if type_id is None:
            raise DatasetError(
                f"ground-truth folder {folder} names no known instrument: expected a folder "
                "named after one of the EndoVis 2017 instruments (e.g. Bipolar_Forceps_labels, "
                "Left_Prograsp_Forceps, Other_labels)"
            )
        folders.append((type_id, folder))
    if not folders:
        raise DatasetError(f"{gt_dir} holds no <Instrument>_labels folders")
    # Ordering by type id (not folder spelling) fixes which instrument wins where masks overlap:
    # the later one (higher type id) overwrites, the same for every archive's naming.
    folders.sort(key=lambda tf: (tf[0], tf[1].name))
    return folders


def _discover_2017(video_id: int, video_dir: Path) -> list[Sample]:
    frame_dir = video_dir / "left_frames"
    frames = _png_stems(frame_dir)
    folders = _gt_folders_2017(video_dir)
    masks_per_folder = []
    for _, folder in folders:
        masks = _png_stems(folder)
        # Real archives hold every mask for every frame, so a gap means a broken download.
        _match_stems(frames, masks, frame_dir, folder)
        masks_per_folder.append(masks)
    return [
        Sample(
            layout=LAYOUT_2017,
            video=video_dir.name,
            video_id=video_id,
            frame=stem,
            image_path=path,
            label_paths=tuple(masks[stem] for masks in masks_per_folder),
        )
        for stem, path in frames.items()
    ]


def _discover_2018(video_id: int, video_dir: Path) -> list[Sample]:
    frame_dir = video_dir / "left_frames"
    label_dir = video_dir / "labels"
    frames = _png_stems(frame_dir)
    labels = _png_stems(label_dir)
    _match_stems(frames, labels, frame_dir, label_dir)
    return [
        Sample(
            layout=LAYOUT_2018,
            video=video_dir.name,
            video_id=video_id,
            frame=stem,
            image_path=path,
            label_paths=(labels[stem],),
        )
        for stem, path in frames.items()
    ]


def _check_task_for_layout(layout: str, task: Task, where: Path) -> None:
    if layout == LAYOUT_2018 and task == "types":
        raise DatasetError(
            f"{where}: EndoVis 2018 labels carry no instrument types (binary and parts only); "
            "use task 'binary' or 'parts', or an EndoVis 2017 dataset for 'types'"
        )


def discover(root: Path, task: Task, videos: Iterable[int] | None = None) -> list[Sample]:
    """All samples under `root`, sorted by (video_id, frame), optionally only the given videos.

    Requesting a video id that is not present is an error too: a typo in a split would
    otherwise silently train on less data.
    """
    task = check_task(task)
    root = _check_root(root)
    layout = detect_layout(root)
    _check_task_for_layout(layout, task, root)
    video_dirs = _video_dirs(root, _DIR_2017 if layout == LAYOUT_2017 else _DIR_2018)
    if videos is not None:
        wanted = set(videos)
        available = [vid for vid, _ in video_dirs]
        missing = sorted(wanted - set(available))
        if missing:
            raise DatasetError(
                f"{root}: requested videos {missing} not found; available video ids: {available}"
            )
        video_dirs = [(vid, d) for vid, d in video_dirs if vid in wanted]
    samples: list[Sample] = []
    for video_id, video_dir in video_dirs:
        found = (_discover_2017 if layout == LAYOUT_2017 else _discover_2018)(video_id, video_dir)
        if not found:
            raise DatasetError(f"{video_dir / 'left_frames'} holds no .png frames")
        samples.extend(found)
    if not samples:
        raise DatasetError(f"{root}: no samples found for videos {sorted(set(videos or []))}")
    samples.sort(key=lambda s: (s.video_id, _natural_key(s.frame)))
    logger.debug(
        "{}: {} layout, {} videos, {} samples", root, layout, len(video_dirs), len(samples)
    )
    return samples


# --------------------------------------------------------------------------------------------
# Reading images and labels
# --------------------------------------------------------------------------------------------


def _decode(path: Path, flags: int, what: str) -> np.ndarray:
    # Decoding from bytes (rather than cv2.imread) separates "missing" from "corrupt" in the
    # message and works with non-ASCII paths on every platform.
    path = Path(path)
    try:
        buf = np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise DatasetError(f"cannot read {what} {path}: {e.strerror or e}") from e
    if buf.size == 0:
        raise DatasetError(f"cannot read {what} {path}: file is empty, expected a PNG image")
    try:
        img = cv2.imdecode(buf, flags)
    except cv2.error as e:
        raise DatasetError(f"cannot decode {what} {path}: {e}") from e
    if img is None:
        raise DatasetError(f"cannot decode {what} {path}: not a readable image")
    return img


def _to_rgb(path: Path, what: str) -> np.ndarray:
    flag = getattr(cv2, "IMREAD_COLOR_RGB", None)
    if flag is not None:
        return _decode(path, flag, what)
    # OpenCV < 4.10 has no RGB read flag: decode as BGR and swap.
    return cv2.cvtColor(_decode(path, cv2.IMREAD_COLOR, what), cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """RGB uint8 HxWx3 image; DatasetError naming the file if it cannot be read."""
    img = _to_rgb(path, "image")
    if img.dtype != np.uint8:  # IMREAD_COLOR already converts 16-bit; this guards other builds
        raise DatasetError(f"image {path} has dtype {img.dtype}, expected 8-bit")
    return img


def _read_mask_2017(path: Path) -> np.ndarray:
    """One instrument's greyscale part mask, values checked against {0, 10, 20, 30, 40}."""
    mask = _decode(path, cv2.IMREAD_UNCHANGED, "mask")
    if mask.ndim == 3:
        if (
            mask.shape[2] == 3
            and (mask[..., 0] == mask[..., 1]).all()
            and (mask[..., 0] == mask[..., 2]).all()
        ):
            mask = mask[..., 0]  # greyscale saved as RGB: channels agree, any one will do
        else:
            raise DatasetError(
                f"mask {path} has {mask.shape[2]} channels with differing values; expected a "
                "single-channel greyscale mask (or 3 identical channels)"
            )
    if not np.issubdtype(mask.dtype, np.integer):
        raise DatasetError(f"mask {path} has dtype {mask.dtype}, expected integer pixel values")
    if mask.dtype == np.uint8:
        present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))  # faster than unique
    else:
        present = np.unique(mask)
    unexpected = [int(v) for v in present if int(v) not in _MASK_VALUES_2017]
    if unexpected:
        raise DatasetError(
            f"mask {path} has unexpected pixel values {unexpected[:5]}"
            f"{' ...' if len(unexpected) > 5 else ''}; expected only {list(_MASK_VALUES_2017)} "
            "(background, shaft, wrist, clasper, probe)"
        )
    return mask.astype(np.uint8, copy=False)


def _read_label_2017(sample: Sample, task: Task) -> np.ndarray:
    if not sample.label_paths:
        raise DatasetError(f"sample {sample.image_path} has no ground-truth masks")
    parts_lut = np.zeros(256, dtype=np.uint8)
    for value, part_id in ENDOVIS17_PART_VALUES.items():
        parts_lut[value] = part_id
    label: np.ndarray | None = None
    first_path = sample.label_paths[0]
    for path in sample.label_paths:
        mask = _read_mask_2017(path)
        if label is None:
            label = np.zeros(mask.shape, dtype=np.uint8)
        elif mask.shape != label.shape:
            raise DatasetError(
                f"mask {path} is {mask.shape[0]}x{mask.shape[1]} but mask {first_path} is "
                f"{label.shape[0]}x{label.shape[1]}; expected all masks of a frame to match"
            )
        on = mask > 0
        if task == "binary":
            label[on] = 1
        elif task == "parts":
            label[on] = parts_lut[mask[on]]
        else:
            type_id = type_id_for_folder(path.parent.name)
            if type_id is None:
                raise DatasetError(f"ground-truth folder {path.parent} names no known instrument")
            label[on] = type_id
    assert label is not None
    return label


def load_class_table_2018(path: Path) -> dict[str, tuple[int, int, int]]:
    """Read an EndoVis 2018 labels.json: a list of {"name", "color": [r, g, b], "classid"}."""
    path = Path(path)
    try:
        return dict(_load_class_table_cached(str(path), path.stat().st_mtime_ns))
    except OSError as e:
        raise DatasetError(f"cannot read class table {path}: {e.strerror or e}") from e


@lru_cache(maxsize=16)
def _load_class_table_cached(
    path_str: str, _mtime_ns: int
) -> tuple[tuple[str, tuple[int, int, int]], ...]:
    # Cached because every label of a sequence would otherwise re-parse the same file; the mtime
    # in the key drops the cache when the file is rewritten.
    path = Path(path_str)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot parse class table {path}: {e}") from e
    expected = 'expected a JSON list of {"name": str, "color": [r, g, b], "classid": int}'
    if not isinstance(entries, list) or not entries:
        raise DatasetError(f"class table {path} is not a non-empty list; {expected}")
    table: dict[str, tuple[int, int, int]] = {}
    for i, entry in enumerate(entries):
        color = entry.get("color") if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        if (
            not isinstance(name, str)
            or not isinstance(color, list)
            or len(color) != 3
            or not all(isinstance(c, int) and 0 <= c <= 255 for c in color)
        ):
            raise DatasetError(
                f"class table {path}: entry {i} ({entry!r}) is malformed; {expected}"
            )
        table[name] = (color[0], color[1], color[2])
    return tuple(table.items())


def _class_table_for(sample: Sample) -> tuple[Mapping[str, Sequence[int]], str]:
    """The class table that applies to `sample` and where it came from (for messages)."""
    # seq_N/labels.json overrides ROOT/labels.json (the official release puts it in ROOT).
    seq_dir = sample.image_path.parent.parent
    for candidate in (seq_dir / "labels.json", seq_dir.parent / "labels.json"):
        if candidate.is_file():
            return load_class_table_2018(candidate), str(candidate)
    return DEFAULT_CLASS_TABLE_2018, "the default EndoVis 2018 class table"


def _read_label_2018(
    sample: Sample, task: Task, class_table: Mapping[str, Sequence[int]] | None
) -> np.ndarray:
    _check_task_for_layout(LAYOUT_2018, task, sample.label_paths[0])
    if class_table is None:
        table, source = _class_table_for(sample)
    else:
        table, source = class_table, "the class table passed to read_label"
    if not _PARTS_2018.keys() & table.keys():
        # Otherwise every pixel would decode as background and training would learn nothing.
        raise DatasetError(
            f"{source} (used for {sample.label_paths[0]}) names none of the instrument classes "
            f"{sorted(_PARTS_2018)}; found {sorted(table)}"
        )
    (path,) = sample.label_paths
    rgb = _to_rgb(path, "label").astype(np.int32)
    keys = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]

    # Sorted colour keys + searchsorted: O(N log K) lookup without a 16M-entry LUT.
    by_key: dict[int, int] = {}
    for name, (r, g, b) in table.items():
        key = (int(r) << 16) | (int(g) << 8) | int(b)
        part_id = _PARTS_2018.get(name, 0)
        class_id = min(part_id, 1) if task == "binary" else part_id
        if key in by_key and by_key[key] != class_id:
            raise DatasetError(f"{source}: colour RGB{(r, g, b)} is used by two classes")
        by_key[key] = class_id
    table_keys = np.array(sorted(by_key), dtype=np.int32)
    table_ids = np.array([by_key[k] for k in sorted(by_key)], dtype=np.uint8)
    idx = np.searchsorted(table_keys, keys).clip(0, len(table_keys) - 1)
    known = table_keys[idx] == keys
    if not known.all():
        row, col = (int(v) for v in np.argwhere(~known)[0])
        colour = tuple(int(c) for c in rgb[row, col])
        raise DatasetError(
            f"label {path} has colour RGB{colour} at row {row}, col {col} (and "
            f"{int((~known).sum())} unknown pixels in all) that is not in {source}; "
            f"expected one of {sorted(tuple(int(c) for c in v) for v in table.values())}"
        )
    return table_ids[idx]


def read_label(
    sample: Sample,
    task: Task,
    class_table_2018: Mapping[str, Sequence[int]] | None = None,
) -> np.ndarray:
    """uint8 HxW class ids of `sample` for `task` (ids as in common.classes), uncropped.

    2017: the ground-truth masks of all instruments composed; where masks overlap, the one with
    the higher type id wins. 2018: colours decoded with `class_table_2018` (name -> RGB), else
    labels.json beside the sequence or its parent, else DEFAULT_CLASS_TABLE_2018.
    """
    task = check_task(task)
    if sample.layout == LAYOUT_2017:
        return _read_label_2017(sample, task)
    if sample.layout == LAYOUT_2018:
        return _read_label_2018(sample, task, class_table_2018)
    raise ValueError(
        f"sample {sample.image_path} has unknown layout {sample.layout!r}; "
        f"expected {LAYOUT_2017!r} or {LAYOUT_2018!r}"
    )


def standard_crop(a: np.ndarray) -> np.ndarray:
    """Apply STANDARD_CROP to a 1080x1920(xC) array; return any other array unchanged."""
    if a.shape[:2] != FULL_HD:
        return a
    row, col, height, width = STANDARD_CROP
    # Contiguous copy so that cv2 and torch.from_numpy get a plain buffer, not a strided view.
    return np.ascontiguousarray(a[row : row + height, col : col + width])


def load_sample(sample: Sample, task: Task) -> tuple[np.ndarray, np.ndarray]:
    """(RGB image, label) of `sample`, both standard-cropped when the frame is 1080x1920."""
    image = read_image(sample.image_path)
    label = read_label(sample, task)
    if image.shape[:2] != label.shape[:2]:
        labels = ", ".join(str(p) for p in sample.label_paths)
        raise DatasetError(
            f"image {sample.image_path} is {image.shape[0]}x{image.shape[1]} but its label "
            f"{labels} is {label.shape[0]}x{label.shape[1]}; expected equal sizes"
        )
    return standard_crop(image), standard_crop(label)


def validate(samples: list[Sample], task: Task, max_check: int | None = None) -> None:
    """Read every sample (or `max_check` evenly spaced ones) and raise on the first problem.

    Meant to run before training so that a corrupt file fails the run in seconds, not mid-epoch.
    """
    task = check_task(task)
    if not samples:
        raise DatasetError("no samples to validate: expected at least one")
    if max_check is not None and max_check < 1:
        raise ValueError(f"max_check must be >= 1 or None, got {max_check}")
    if max_check is None or max_check >= len(samples):
        chosen = samples
    else:
        # Evenly spaced so every video (they are contiguous after sorting) gets looked at.
        idx = np.unique(np.linspace(0, len(samples) - 1, max_check).round().astype(int))
        chosen = [samples[i] for i in idx]
    for sample in chosen:
        load_sample(sample, task)
    logger.info("validated {} of {} samples for task {}", len(chosen), len(samples), task)


def split_by_fold(samples: Iterable[Sample], fold: int) -> tuple[list[Sample], list[Sample]]:
    """(train, val) for TernausNet fold `fold`: val holds whole videos TERNAUSNET_FOLDS[fold]."""
    if fold not in TERNAUSNET_FOLDS:
        raise ValueError(
            f"unknown fold {fold!r}: expected one of {', '.join(map(str, TERNAUSNET_FOLDS))}"
        )
    samples = list(samples)
    val_videos = set(TERNAUSNET_FOLDS[fold])
    if any(s.layout != LAYOUT_2017 for s in samples):
        logger.warning("TernausNet folds are defined for EndoVis 2017 videos 1-8")
    train = [s for s in samples if s.video_id not in val_videos]
    val = [s for s in samples if s.video_id in val_videos]
    if not train or not val:
        present = sorted({s.video_id for s in samples})
        raise DatasetError(
            f"fold {fold} (validation videos {sorted(val_videos)}) leaves "
            f"{'no training' if not train else 'no validation'} samples; videos present: {present}"
        )
    return train, val
