"""Per-frame costs of what the frame path adds to every 1080p frame: the timecode burnt into
the picture and the mask-only stream's encoding, beside a plain copy of the frame (the floor
any per-frame work is compared with), all measured in this process.

    python -m orstream.benchmarks.codecs [--frames 60] [--repeat 5] [--out ...]

Label maps are the synthetic generator's ground truth (types, 256x320 over the EndoVis crop of
a 1080p picture), so the runs and outlines are those of real scenes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from orstream.benchmarks.common import machine, stats, table, write_json
from orstream.common.crop import endovis_region
from orstream.pipeline import masks, timecode
from orstream.pipeline.frame import Frame
from orstream.pipeline.stages import class_table
from orstream.training.synth.generator import SynthConfig, SyntheticEndoscope


def _frames(count: int) -> list[Frame]:
    gen = SyntheticEndoscope(SynthConfig(width=320, height=256, seed=5))
    region = endovis_region(1080, 1920)
    out = []
    for i in range(count):
        labels = gen.render(i * 7).label("types").astype(np.uint8)
        frame = Frame.capture("or-1", i, np.zeros((1080, 1920, 3), np.uint8))
        frame.labels = cv2.resize(labels, (320, 256), interpolation=cv2.INTER_NEAREST)
        frame.region = region
        out.append(frame)
    return out


def _ms(fn, items: list, repeat: int) -> np.ndarray:
    fn(items[0])  # first call: imports, caches
    out = []
    for _ in range(repeat):
        for item in items:
            t0 = time.perf_counter_ns()
            fn(item)
            out.append((time.perf_counter_ns() - t0) / 1e6)
    return np.array(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/codecs.json"))
    args = parser.parse_args(argv)
    frames = _frames(args.frames)
    classes = class_table("types")
    picture = np.random.default_rng(0).integers(0, 255, (1080, 1920, 3), np.uint8)
    scratch = np.empty_like(picture)
    encoded = [masks.encode(f, classes) for f in frames]
    cases = {
        "copy of a 1080p frame (floor)": lambda f: np.copyto(scratch, picture),
        "timecode.write, 1080p": lambda f: timecode.write(picture, f.seq, f.t_capture_ns,
                                                           f.t_wall_ns),
        "timecode.read, 1080p": lambda f: timecode.read(picture),
        "masks.encode (labels, outlines)": lambda f: masks.encode(f, classes),
    }
    rows = []
    results = {}
    for name, fn in cases.items():
        results[name] = stats(_ms(fn, frames, args.repeat))
    results["masks.decode"] = stats(_ms(masks.decode, encoded, args.repeat))
    floor = results["copy of a 1080p frame (floor)"]["p50"]
    for name, s in results.items():
        rows.append({"what": name, **s, "ratio": s["p50"] / floor})
    sizes = np.array([masks.message_bytes(m) for m in encoded])
    print(table(rows, [("what", "per frame", "s"), ("p50", "p50 ms", ".3f"),
                       ("p99", "p99 ms", ".3f"), ("ratio", "p50 / copy", ".2f")]))
    print(f"mask message: {np.median(sizes):,.0f} bytes p50, {sizes.max():,} max")
    path = write_json(args.out, {"machine": machine(), "results": results,
                                 "mask_bytes_p50": float(np.median(sizes))})
    print(f"\n{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
