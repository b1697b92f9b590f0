"""Write synthetic data to disk: EndoVis 2017-layout datasets and H.264 videos."""

from __future__ import annotations

import json
import multiprocessing as mp
from dataclasses import asdict, replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
from loguru import logger
from tqdm import tqdm

from orstream.common.classes import PART_PIXEL_VALUE, TYPE_FOLDER_NAMES
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope

# Fast PNG: the files are an intermediate, and level 1 is ~4x faster than the default 3.
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1]
_PARTS_TO_PIXEL = np.zeros(256, np.uint8)
for _part_id, _value in PART_PIXEL_VALUE.items():
    _PARTS_TO_PIXEL[_part_id] = _value


def video_seed(seed: int, video: int) -> int:
    """Seed of video N in a dataset made with `seed`: distinct datasets never share a video."""
    return int(np.random.SeedSequence([seed, video]).generate_state(1)[0])


def _types_in_video(synth: SyntheticEndoscope, indices: range) -> list[int]:
    fps = synth.config.fps
    seen = {v.type_id for i in indices for v in synth._schedule.active(i / fps)}
    return sorted(seen)


def _write_video(job: tuple[Path, int, int, int, SynthConfig]) -> int:
    root, video, frames, step, config = job
    cv2.setNumThreads(1)  # one process per video already fills the cores
    synth = SyntheticEndoscope(config)
    vdir = root / f"instrument_dataset_{video}"
    (vdir / "left_frames").mkdir(parents=True, exist_ok=True)
    # The real archives hold one mask per instrument folder for every frame, present or not.
    indices = range(0, frames * step, step)
    type_ids = _types_in_video(synth, indices)
    gt_dirs = {t: vdir / "ground_truth" / f"{TYPE_FOLDER_NAMES[t]}_labels" for t in type_ids}
    for d in gt_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    with open(vdir / "captions.jsonl", "w") as captions:
        for n, index in enumerate(indices):
            frame = synth.render(index)
            name = f"frame{n:03d}.png"
            cv2.imwrite(str(vdir / "left_frames" / name),
                        cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR), _PNG_FAST)
            pixel = _PARTS_TO_PIXEL[frame.parts]
            for t, d in gt_dirs.items():
                cv2.imwrite(str(d / name), np.where(frame.types == t, pixel, 0), _PNG_FAST)
            captions.write(json.dumps({
                "frame": name,
                "source_frame": index,
                "time_s": round(frame.time_s, 3),
                "caption": frame.caption,
                "smoke": round(frame.smoke, 3),
                "instruments": [asdict(s) for s in frame.instruments if s.visible],
            }) + "\n")
    return video


def write_endovis2017(root: Path, videos: int = 8, frames: int = 225, seed: int = 0,
                      width: int = 1920, height: int = 1080, workers: int = 2,
                      step: int = 15) -> Path:
    """Write `videos` synthetic procedures in the EndoVis 2017 layout under `root`.

    Frames are taken every `step` frames of the 30 fps video (2 Hz by default): consecutive
    frames are near-duplicates, and spacing them spreads 225 frames over ~2 minutes of
    procedure, with many instrument visits per video.
    Frames are 1920x1080 by default, as in the real challenge, so the standard crop applies.
    Each video also gets a captions.jsonl (caption and instrument states per frame) for the
    scene-description model; EndoVis loaders ignore it.
    """
    if videos < 1 or frames < 1:
        raise ValueError(f"need at least one video and one frame, got videos={videos} "
                         f"frames={frames}")
    if frames > 1000:
        raise ValueError(f"frames={frames}: the EndoVis layout numbers frames with 3 digits "
                         "(frame000..frame999)")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    base = SynthConfig(width=width, height=height, seed=seed)
    if step < 1:
        raise ValueError(f"step must be at least 1 frame, got {step}")
    jobs = [(root, v, frames, step, replace(base, seed=video_seed(seed, v)))
            for v in range(1, videos + 1)]
    (root / "synth.json").write_text(json.dumps({
        "generator": "orstream synthetic endoscope", "layout": "endovis2017", "seed": seed,
        "videos": videos, "frames": frames, "step": step, "width": width, "height": height,
        "video_seeds": {v: job[4].seed for v, job in zip(range(1, videos + 1), jobs,
                                                          strict=True)},
    }, indent=2))
    logger.info("writing {} synthetic videos x {} frames to {}", videos, frames, root)
    workers = max(1, min(workers, videos))
    with tqdm(total=videos, desc="synth dataset", unit="video") as bar:
        if workers == 1:
            for job in jobs:
                _write_video(job)
                bar.update()
        else:
            with mp.get_context("spawn").Pool(workers) as pool:
                for _ in pool.imap_unordered(_write_video, jobs):
                    bar.update()
    return root


def write_video(path: Path, seconds: float = 10.0, width: int = 1920, height: int = 1080,
                fps: float = 30.0, seed: int = 0, crf: int = 18) -> Path:
    """Encode a synthetic procedure to H.264 (any container FFmpeg writes, by extension)."""
    import av  # imported here: only this writer needs FFmpeg

    if seconds <= 0:
        raise ValueError(f"seconds must be positive, got {seconds}")
    if width % 2 or height % 2:
        raise ValueError(f"H.264 with yuv420p needs an even size, got {width}x{height}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    synth = SyntheticEndoscope(SynthConfig(width=width, height=height, fps=fps, seed=seed))
    count = max(1, round(seconds * fps))
    rate = Fraction(fps).limit_denominator(1001)  # 29.97 -> 30000/1001, as NTSC
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for frame in tqdm(synth.frames(count), total=count, desc="synth video", unit="frame"):
            video_frame = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            for packet in stream.encode(video_frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    logger.info("wrote {} frames ({}x{} @ {} fps) to {}", count, width, height, fps, path)
    return path
