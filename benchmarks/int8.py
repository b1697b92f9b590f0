"""INT8 against fp32 of the same backend, on the same frames, in the same run.

    python -m orstream.benchmarks.int8 [--backends onnxruntime,openvino] [--calib FILE]
                              [--frames 300] [--rounds 5] [--iters 20] [--out benchmarks/results]

Builds (through the accuracy gate, into a throwaway cache) the INT8 engine of each backend
from a calibration set (collected from the synthetic feed unless --calib is given), then
times fp32 and INT8 in interleaved rounds on one frame, and scores both on the set's
held-out frames against their ground truth (mean foreground Dice over the classes present).
Target on a CPU: INT8 at least 1.5x faster than fp32 with at most 1.0 Dice point lost.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from orstream.benchmarks.common import machine, stats, table, time_calls, write_json
from orstream.calibration.build import GateRefused, build_int8
from orstream.calibration.gate import judge
from orstream.calibration.sets import collect, load_set
from orstream.engines import checkpoint as ckpt
from orstream.engines.cache import EngineCache
from orstream.engines.export import EngineSpec, open_engine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--weights", type=Path, default=ckpt.shipped("types"))
    parser.add_argument("--calib", type=Path, help="calibration set (default: synthetic)")
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    checkpoint = ckpt.load(args.weights)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        calib_path = args.calib or collect(["synthetic:7"], args.frames).save(
            Path(tmp) / "calib.npz")
        calib = load_set(calib_path)
        truth = calib.holdout_truth.get(checkpoint.task)
        frame = calib.holdout[0]
        cache = EngineCache(Path(tmp) / "engines")
        for backend in args.backends.split(","):
            try:
                build_int8(args.weights, backend, calib_path, cache=cache,
                           report_dir=Path(tmp) / f"refused-{backend}")
                gate = "passed"
            except GateRefused as exc:
                gate = f"refused ({exc.report.drop_dice_points:.2f} points)"
                rows.append({"backend": backend, "precision": "int8", "gate": gate})
                continue
            engines = {p: open_engine(EngineSpec(args.weights, backend, p, calib.size,
                                                 cache=cache.root)) for p in ("fp32", "int8")}
            samples: dict[str, list[np.ndarray]] = {p: [] for p in engines}
            for _ in range(args.rounds):
                for p, engine in engines.items():
                    samples[p].append(time_calls(lambda e=engine: e(frame), args.iters, 3))
            labels = {p: np.stack([e(f) for f in calib.holdout]) for p, e in engines.items()}
            report = judge(labels["fp32"], labels["int8"], truth, checkpoint.classes, backend,
                           1.0, f"ground truth ({checkpoint.task})")
            base = stats(np.concatenate(samples["fp32"]))
            for p in engines:
                s = stats(np.concatenate(samples[p]))
                rows.append({"backend": backend, "precision": p, **s,
                             "speedup_p50": base["p50"] / s["p50"],
                             "dice": 100 * (report.float_mean_dice if p == "fp32"
                                            else report.int8_mean_dice),
                             "dice_drop_points": 0.0 if p == "fp32"
                             else report.drop_dice_points,
                             "agreement_with_fp32": 1.0 if p == "fp32"
                             else report.pixel_agreement, "gate": gate})
    print(table(rows, [("backend", "backend", ""), ("precision", "precision", ""),
                       ("p50", "p50 ms", ".2f"), ("p99", "p99 ms", ".2f"),
                       ("speedup_p50", "x fp32", ".2f"), ("dice", "Dice %", ".2f"),
                       ("dice_drop_points", "drop (points)", ".2f"),
                       ("agreement_with_fp32", "agreement", ".4f"), ("gate", "gate", "")]))
    for r in rows:
        if r["precision"] == "int8" and "speedup_p50" in r:
            met = r["speedup_p50"] >= 1.5 and r["dice_drop_points"] <= 1.0
            print(f"{r['backend']}: INT8 {r['speedup_p50']:.2f}x fp32, "
                  f"{r['dice_drop_points']:.2f} Dice points lost: target (>=1.5x, <=1.0) "
                  f"{'met' if met else 'MISSED'}")
    path = write_json(args.out / "int8.json", {"machine": machine(), "rows": rows,
                                               "calibration": calib.provenance["sources"]})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
