"""VLM datasets from the synthetic endoscope: small frames plus each frame's ground truth.

`orstream synth vlm-data DIR --frames N --seed S` renders procedures at 1080p (the resolution
the Describer sees live), takes the field-of-view crop down to the model's input size with
the Describer's own preprocessing, and writes

    DIR/images.npy     (N, H, W, 3) uint8 RGB at the model input size (128x160: 61 kB a frame)
    DIR/scenes.jsonl   per frame: video, seed, frame index, caption, smoke, visible tools
    DIR/info.json      how it was made (seed, sizes, step) for provenance and checks

Written once rather than rendered on the fly: a 1080p frame costs ~8 ms to render and
reduce while a training step on two cores needs ~40 frames, so rendering every epoch would
take as long as training; on disk, 20 000 frames are 1.2 GB that load in a second. Questions
are not stored: they are drawn from the ground truth per step (training) or from a fixed
seed (evaluation), so one dataset serves any mix of phrasings.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
from loguru import logger
from tqdm import tqdm

from orstream.engines.vlm.preprocess import prepare_image
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope
from orstream.training.synth.writers import video_seed
from orstream.training.vlm.tasks import Scene

FORMAT = "orstream.vlm-data/1"
SMOKE_VISIBLE = 0.2  # density from which the generator's caption mentions smoke


@dataclass
class VLMData:
    images: np.ndarray  # (N, H, W, 3) uint8
    scenes: list[Scene]
    records: list[dict]  # the raw scenes.jsonl rows (video ids, frame indices, ...)
    info: dict

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def input_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[1:3])

    def videos(self) -> np.ndarray:
        return np.array([r["video"] for r in self.records])


def _render_video(job: tuple[int, int, int, int, tuple[int, int], tuple[int, int]]
                  ) -> tuple[int, np.ndarray, list[dict]]:
    seed, video, frames, step, render_wh, input_size = job
    cv2.setNumThreads(1)  # one process per video already fills the cores
    vseed = video_seed(seed, video)
    synth = SyntheticEndoscope(SynthConfig(width=render_wh[0], height=render_wh[1], seed=vseed))
    images = np.empty((frames, *input_size, 3), np.uint8)
    records = []
    for n, index in enumerate(range(0, frames * step, step)):
        frame = synth.render(index)
        images[n] = prepare_image(frame.image, input_size)
        records.append({
            "video": video, "seed": vseed, "frame": index, "time_s": round(frame.time_s, 3),
            "caption": frame.caption, "smoke": round(frame.smoke, 3),
            "smoke_visible": frame.smoke > SMOKE_VISIBLE,
            "instruments": [{k: v for k, v in asdict(s).items() if k != "tip_xy"}
                            for s in frame.instruments if s.visible],
        })
    return video, images, records


def write_vlm_data(root: Path | str, frames: int, seed: int = 0, per_video: int = 50,
                   step: int = 30, render_size: tuple[int, int] = (1920, 1080),
                   input_size: tuple[int, int] = (128, 160), workers: int = 2) -> Path:
    """Render `frames` frames: ceil(frames / per_video) procedures of seed `seed`, one frame
    every `step` video frames (30: one a second, so consecutive samples differ). Each
    procedure has its own tissue texture; many short ones generalise better than a few long
    ones (engines/weights/README.md). render_size is (W, H); input_size is (H, W)."""
    root = Path(root)
    if frames < 1 or per_video < 1 or step < 1:
        raise ValueError(f"frames, per_video and step must be positive, got {frames}, "
                         f"{per_video}, {step}")
    root.mkdir(parents=True, exist_ok=True)
    videos = math.ceil(frames / per_video)
    counts = [min(per_video, frames - v * per_video) for v in range(videos)]
    jobs = [(seed, v, counts[v], step, tuple(render_size), tuple(input_size))
            for v in range(videos)]
    images = np.lib.format.open_memmap(root / "images.npy", mode="w+", dtype=np.uint8,
                                       shape=(frames, *input_size, 3))
    starts = np.cumsum([0, *counts])
    records: list[list[dict]] = [[] for _ in range(videos)]
    with mp.get_context("spawn").Pool(workers) if workers > 1 else _Serial() as pool:
        for video, imgs, recs in tqdm(pool.imap_unordered(_render_video, jobs), total=videos,
                                      desc="rendering procedures", unit="video"):
            images[starts[video]:starts[video + 1]] = imgs
            records[video] = recs
    images.flush()
    del images
    with open(root / "scenes.jsonl", "w") as f:
        for rec in (r for recs in records for r in recs):
            f.write(json.dumps(rec) + "\n")
    info = {"format": FORMAT, "seed": seed, "frames": frames, "videos": videos,
            "per_video": per_video, "step": step, "render_size_wh": list(render_size),
            "input_size": list(input_size), "smoke_visible": SMOKE_VISIBLE}
    (root / "info.json").write_text(json.dumps(info, indent=1))
    logger.info("{}: {} frames from {} procedures (seed {}) at {}x{}", root, frames, videos,
                seed, *input_size)
    return root


class _Serial:
    """The Pool interface in-process, for workers=1 (tests, debugging)."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @staticmethod
    def imap_unordered(fn, jobs):
        return map(fn, jobs)


def load_vlm_data(root: Path | str) -> VLMData:
    root = Path(root)
    for name in ("info.json", "images.npy", "scenes.jsonl"):
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root} is not a VLM dataset: {name} is missing (make one "
                                    f"with `orstream synth vlm-data {root} --frames N`)")
    info = json.loads((root / "info.json").read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{root}/info.json: format {info.get('format')!r}, expected {FORMAT!r}")
    images = np.load(root / "images.npy")
    records = [json.loads(line) for line in (root / "scenes.jsonl").read_text().splitlines()]
    if len(records) != len(images):
        raise ValueError(f"{root}: {len(images)} images but {len(records)} scenes")
    return VLMData(images, [Scene.from_record(r) for r in records], records, info)
