"""Calibration sets: frames spread over recordings, datasets or the synthetic feed, passed
through the live path's crop and resize, stored compactly with where each came from.

A set holds two disjoint samples of the same sources: the calibration frames (what the
quantiser sees) and held-out frames at positions in between (what the accuracy gate judges
on). Synthetic frames carry their exact label maps; frames from recordings have none. Ground
truth is kept per held-out frame, so a set that mixes the synthetic feed with a recording
still lets the gate score both engines against the synthetic frames' truth
(calibration/gate.py).

The file is a NumPy .npz (uint8 and bool arrays, deflate-compressed, read with
allow_pickle=False) whose `provenance` entry is JSON text: no pickled objects anywhere. Per
task it holds `holdout_known_TASK` (M,) bool, which held-out frames have labels, and
`holdout_labels_TASK` (K, H, W) uint8, the labels of those K frames in held-out order. Sets
from before the mask (format orstream.calib/1) kept labels only when every held-out frame had
them; they read as such.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from loguru import logger
from tqdm import tqdm

from orstream.common.crop import crop_region
from orstream.common.errors import OrstreamError
from orstream.engines.cache import file_sha256
from orstream.engines.preprocess import resize_image, resize_labels

MIN_FRAMES = 100  # fewer cannot represent a procedure's lighting, smoke and instruments
WARN_FRAMES = 300
# Default held-out frames per source: enough that the gate's score on each source's frames
# (say, the synthetic ones with ground truth) is not a handful of frames' luck.
HOLDOUT_PER_SOURCE = 50
FORMAT = "orstream.calib/2"  # /1: held-out labels only when every held-out frame had them
TASKS = ("binary", "parts", "types")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


class CalibrationError(OrstreamError, ValueError):
    """A calibration set that cannot be made or read; names the input and the fix."""


@dataclass
class Sample:
    image: np.ndarray  # (H, W, 3) uint8 at the model's input size
    where: dict[str, Any]  # provenance: source, frame index or time
    labels: dict[str, np.ndarray] = field(default_factory=dict)  # task -> (H, W) uint8


@dataclass(frozen=True)
class GroundTruth:
    """One task's labels for the held-out frames that have them."""

    known: np.ndarray  # (M,) bool: which held-out frames have labels
    labels: np.ndarray  # (K, H, W) uint8, K = known.sum(): those frames' labels, in order

    def __post_init__(self) -> None:
        assert self.known.dtype == bool and self.known.ndim == 1, "known is an (M,) bool mask"
        assert len(self.labels) == int(self.known.sum()), "one label map per known frame"

    @property
    def frames(self) -> int:
        return len(self.labels)


@dataclass
class CalibrationSet:
    frames: np.ndarray  # (N, H, W, 3) uint8: what the quantiser calibrates on
    holdout: np.ndarray  # (M, H, W, 3) uint8: what the accuracy gate judges on
    holdout_truth: dict[str, GroundTruth]  # task -> labels of the held-out frames that have any
    provenance: dict[str, Any]
    path: Path | None = None

    @property
    def size(self) -> tuple[int, int]:
        return tuple(self.frames.shape[1:3])

    def sha256(self) -> str:
        if self.path is None:
            raise CalibrationError("a calibration set has a hash once it is saved")
        return file_sha256(self.path)

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays = {"frames": self.frames, "holdout": self.holdout,
                  "provenance": np.array(json.dumps(self.provenance))}
        for task, truth in self.holdout_truth.items():
            arrays[f"holdout_known_{task}"] = truth.known
            arrays[f"holdout_labels_{task}"] = truth.labels
        np.savez_compressed(tmp, **arrays)
        tmp.replace(path)  # never a half-written set under the final name
        self.path = path
        return path


def load_set(path: Path | str) -> CalibrationSet:
    path = Path(path)
    if not path.is_file():
        raise CalibrationError(f"calibration set {path} does not exist: make one with "
                               f"`orstream calibrate collect --source SPEC --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as data:
            frames, holdout = data["frames"], data["holdout"]
            provenance = json.loads(str(data["provenance"]))
            stored = {t: (data[f"holdout_labels_{t}"], data.get(f"holdout_known_{t}"))
                      for t in TASKS if f"holdout_labels_{t}" in data.files}
    except (OSError, ValueError, KeyError) as exc:
        raise CalibrationError(f"{path} is not an orstream calibration set ({exc}): make one "
                               f"with `orstream calibrate collect`") from exc
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise CalibrationError(f"{path}: frames are {frames.dtype} {frames.shape}, expected "
                               f"uint8 (N, H, W, 3)")
    truth = {}
    for task, (labels, known) in stored.items():
        if known is None:  # format /1: labels were kept only when all frames had them
            known = np.ones(len(holdout), bool)
        if known.shape != (len(holdout),) or len(labels) != int(known.sum()):
            raise CalibrationError(f"{path}: held-out {task} labels do not match its frames "
                                   f"(a damaged file?): make it again with `orstream "
                                   f"calibrate collect`")
        truth[task] = GroundTruth(known.astype(bool), labels)
    if provenance.get("format") != FORMAT and not truth and any(
            _is_synthetic(s) for s in provenance.get("sources", [])):
        logger.warning("{} was collected before ground truth was kept per frame: its synthetic "
                       "frames' labels were dropped because another source had none, so the "
                       "gate can only score INT8 against the float engine. Run `orstream "
                       "calibrate collect` again to keep them", path)
    return CalibrationSet(frames, holdout, truth, provenance, path)


# ------------------------------------------------------------------ sources


def _spread(count: int, held: int, start: float, stop: float) -> tuple[np.ndarray, np.ndarray]:
    """`count` calibration positions evenly over [start, stop) and `held` (<= count) held-out
    positions, each halfway between two calibration ones: the samples never share a frame."""
    step = (stop - start) / count
    calib = start + step * np.arange(count)
    between = calib + step / 2
    return calib, between[np.linspace(0, count - 1, held).round().astype(int)]


class _Crop:
    """The live path's preprocessing (pipeline/stages.py): EndoVis crop, bilinear resize."""

    def __init__(self, size: tuple[int, int], crop: str) -> None:
        self.size, self.crop = size, crop

    def region(self, h: int, w: int) -> tuple[int, int, int, int]:
        return crop_region(self.crop, h, w)

    def image(self, image: np.ndarray) -> np.ndarray:
        y, x, h, w = self.region(*image.shape[:2])
        return resize_image(np.ascontiguousarray(image[y:y + h, x:x + w]), self.size)

    def labels(self, labels: np.ndarray) -> np.ndarray:
        y, x, h, w = self.region(*labels.shape[:2])
        return resize_labels(np.ascontiguousarray(labels[y:y + h, x:x + w]), self.size)


def _synthetic(spec: str, count: int, held: int, prep: _Crop) -> Iterator[tuple[str, Sample]]:
    from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

    _, _, seed = spec.partition(":")
    synth = SyntheticEndoscope(SynthConfig(seed=int(seed or 0)))
    # Ten minutes of procedure: instruments come and go, smoke drifts through.
    for role, positions in zip(("calib", "holdout"),
                               _spread(count, held, 0, synth.config.fps * 600), strict=True):
        for index in positions.astype(int):
            frame = synth.render(int(index))
            labels = {t: prep.labels(frame.label(t)) for t in TASKS}
            yield role, Sample(prep.image(frame.image), {"source": spec, "index": int(index)},
                               labels)


def _video(path: Path, count: int, held: int, prep: _Crop) -> Iterator[tuple[str, Sample]]:
    import av

    try:
        container = av.open(str(path))
    except av.error.FFmpegError as exc:
        raise CalibrationError(f"source {path} cannot be read as video ({exc.strerror}): "
                               f"pass a recording FFmpeg reads, a folder of images, or "
                               f"synthetic") from exc
    with container:
        if not container.streams.video:
            raise CalibrationError(f"source {path} has no video stream")
        stream = container.streams.video[0]
        duration = (float(stream.duration * stream.time_base) if stream.duration
                    else (container.duration or 0) / 1e6)
        if duration <= 0:
            raise CalibrationError(f"source {path}: no duration to spread frames over "
                                   f"(an empty or broken file?)")
        for role, positions in zip(("calib", "holdout"), _spread(count, held, 0, duration),
                                   strict=True):
            for t in positions:
                # Seek to the keyframe before t, then decode forward to the first frame at
                # or after t: one short decode per sample instead of the whole procedure.
                container.seek(int(t / stream.time_base), stream=stream, backward=True)
                for frame in container.decode(stream):
                    if frame.pts is None or float(frame.pts * stream.time_base) >= t - 1e-3:
                        image = frame.to_ndarray(format="rgb24")
                        yield role, Sample(prep.image(image),
                                           {"source": str(path), "time_s": round(float(t), 3)})
                        break


def _images(folder: Path, count: int, held: int, prep: _Crop) -> Iterator[tuple[str, Sample]]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and "ground_truth" not in p.parts and "labels" not in p.parts)
    if not files:
        raise CalibrationError(f"source {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    for role, positions in zip(("calib", "holdout"), _spread(count, held, 0, len(files)),
                               strict=True):
        for i in np.unique(positions.astype(int)):
            bgr = cv2.imread(str(files[i]), cv2.IMREAD_COLOR)
            if bgr is None:
                raise CalibrationError(f"{files[i]} cannot be read as an image")
            yield role, Sample(prep.image(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)),
                               {"source": str(files[i].relative_to(folder.parent))})


def _is_synthetic(spec: str) -> bool:
    return spec == "synthetic" or spec.startswith("synthetic:")


def _samples(spec: str, count: int, held: int, prep: _Crop) -> Iterator[tuple[str, Sample]]:
    if _is_synthetic(spec):
        return _synthetic(spec, count, held, prep)
    path = Path(spec)
    if path.is_dir():
        return _images(path, count, held, prep)
    if path.is_file():
        return _video(path, count, held, prep)
    raise CalibrationError(f"source {spec} does not exist: give a recording, a folder of "
                           f"frames (e.g. an EndoVis dataset), or synthetic[:SEED]")


def collect(sources: list[str], frames: int = WARN_FRAMES, size: tuple[int, int] = (256, 320),
            crop: str = "endovis", holdout: int | None = None) -> CalibrationSet:
    """Sample `frames` calibration frames spread evenly over `sources` (split between them),
    plus `holdout` held-out frames in between (default: a quarter, at least 50 per source,
    at most `frames`)."""
    if frames < MIN_FRAMES:
        raise CalibrationError(f"--frames {frames}: a calibration set needs at least "
                               f"{MIN_FRAMES} frames ({WARN_FRAMES} or more recommended)")
    if frames < WARN_FRAMES:
        logger.warning("calibration set of {} frames: {} or more represent a procedure better",
                       frames, WARN_FRAMES)
    holdout = min(frames, holdout or max(HOLDOUT_PER_SOURCE * len(sources), frames // 4))
    prep = _Crop(size, crop)
    calib: list[Sample] = []
    held: list[Sample] = []
    with tqdm(total=frames + holdout, desc="collecting frames", unit="frame") as bar:
        for k, spec in enumerate(sources):
            share = frames // len(sources) + (k < frames % len(sources))
            held_share = holdout // len(sources) + (k < holdout % len(sources))
            for role, sample in _samples(spec, share, held_share, prep):
                (calib if role == "calib" else held).append(sample)
                bar.update()
    if len(calib) < MIN_FRAMES:
        raise CalibrationError(f"only {len(calib)} distinct frames could be taken from "
                               f"{', '.join(sources)}: add sources or longer recordings")
    truth = {t: GroundTruth(np.array([t in s.labels for s in held]),
                            np.stack([s.labels[t] for s in held if t in s.labels]))
             for t in TASKS if any(t in s.labels for s in held)}
    provenance = {
        "format": FORMAT,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sources": sources, "size": list(size), "crop": crop,
        "calibration": [s.where for s in calib], "holdout": [s.where for s in held],
        "holdout_ground_truth": {t: g.frames for t, g in truth.items()},  # frames per task
    }
    return CalibrationSet(np.stack([s.image for s in calib]), np.stack([s.image for s in held]),
                          truth, provenance)
