"""Synthetic endoscope frame rate on one core, against a 1080p frame copy in the same run.

    python -m orstream.benchmarks.synth [--size 1920x1080] [--frames 300] [--out benchmarks/results]

The generator feeds the live pipeline, so it must render 1080p well above 60 fps on one core
and leave the rest of the frame budget to segmentation. The baseline is a plain copy of a
frame of the same size (the floor for producing any frame), so the ratio survives a noisy
machine. Two renders are timed: the whole frame with its ground truth (datasets) and the
pixels alone (`render_image`, what the live feed draws).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from orstream.benchmarks.common import machine, stats, table, time_calls, write_json
from orstream.common.sizes import parse_size
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope


def run(width: int, height: int, frames: int, seed: int = 0) -> dict:
    cv2.setNumThreads(1)  # one core, as the issue asks: the pipeline's other stages get the rest
    synth = SyntheticEndoscope(SynthConfig(width=width, height=height, seed=seed))
    counter = iter(range(10**9))
    render = time_calls(lambda: synth.render(next(counter)), iters=frames, warmup=10)
    live = SyntheticEndoscope(SynthConfig(width=width, height=height, seed=seed))
    counter_live = iter(range(10**9))
    image_only = time_calls(lambda: live.render_image(next(counter_live)), iters=frames,
                            warmup=10)
    src = np.zeros((height, width, 3), np.uint8)
    dst = np.empty_like(src)
    copy = time_calls(lambda: np.copyto(dst, src), iters=frames, warmup=10)
    r, c, i = stats(render), stats(copy), stats(image_only)
    return {
        "size": f"{width}x{height}",
        "render_ms": r,
        "image_only_ms": i,
        "image_only_to_render_p50": i["p50"] / r["p50"],
        "copy_ms": c,
        "fps": 1000.0 / r["mean"],
        "ratio_to_copy_p50": r["p50"] / c["p50"],
        "target_fps": 60,
        "meets_target": 1000.0 / r["mean"] > 60,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=parse_size, default="1920x1080", help="WxH")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    w, h = args.size
    result = run(w, h, args.frames)
    rows = [{"what": "synthetic frame + ground truth", **result["render_ms"],
             "fps": result["fps"]},
            {"what": "pixels only (live feed)", **result["image_only_ms"],
             "fps": 1000.0 / result["image_only_ms"]["mean"]},
            {"what": "frame copy (floor)", **result["copy_ms"],
             "fps": 1000.0 / result["copy_ms"]["mean"]}]
    print(f"Synthetic endoscope at {result['size']}, one core, {args.frames} frames")
    print(table(rows, [("what", "", "s"), ("p50", "p50 ms", ".2f"), ("p99", "p99 ms", ".2f"),
                       ("max", "max ms", ".2f"), ("fps", "fps", ".0f")]))
    print(f"render / copy (p50): {result['ratio_to_copy_p50']:.1f}x; "
          f"{result['fps']:.0f} fps against a target of 60: "
          f"{'met' if result['meets_target'] else 'MISSED'}; pixels only / with ground truth "
          f"(p50): {result['image_only_to_render_p50']:.2f}")
    path = write_json(args.out / "synth.json", {"machine": machine(), **result})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
