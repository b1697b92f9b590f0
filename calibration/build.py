"""`orstream calibrate build`: quantise, gate, and store the INT8 engine only if it passes.

The INT8 engine goes into the engine cache under the same key as a float engine of that
backend would (weights, size, backend and library versions, device) with precision int8 and
the calibration set's hash added, and its gate report (JSON and Markdown) beside it. A
refused engine is never stored: its report is written to `report_dir` and the command
exits non-zero.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from loguru import logger

from orstream.calibration.gate import FLOAT_ENGINE, MIN_TRUTH_FRAMES, GateReport, judge
from orstream.calibration.quantize import quantize_onnx
from orstream.calibration.sets import CalibrationError, load_set
from orstream.common.errors import OrstreamError
from orstream.common.sizes import format_hw
from orstream.common.timing import time_calls
from orstream.engines import checkpoint as ckpt
from orstream.engines.backends import INT8_DEVICE, BackendError
from orstream.engines.backends.base import cpu_isa, needs_reduced_int8_range
from orstream.engines.backends.onnx_export import export_onnx
from orstream.engines.cache import EngineCache, Entry
from orstream.engines.export import EngineSpec, open_engine, resolve

# The float engine an INT8 one is gated against is its backend's own float precision
# (TensorRT's fp16, the CPUs' fp32).
FLOAT_OF = {"onnxruntime": "fp32", "openvino": "fp32", "tensorrt": "fp16"}
METHODS = ("minmax", "entropy", "percentile")  # how activation ranges are calibrated


def _why_float(report: GateReport) -> str:
    """Said when the float engine decided: its "drop" is the INT8 engine's disagreement with
    it, which is stricter than an accuracy loss, and how to get a verdict on ground truth."""
    # Held-out frames are split between sources as the set's were: scale up in proportion.
    more = (f"collect again with --holdout "
            f"{math.ceil(MIN_TRUTH_FRAMES * report.frames / report.truth_frames)}"
            if report.truth_frames else "collect again with --source synthetic added")
    return (f" ({report.truth_frames} of {report.frames} held-out frames have ground "
            f"truth, {min(MIN_TRUTH_FRAMES, report.frames)} needed to judge accuracy on it, "
            f"so INT8 is scored against the float engine's own labels, a stricter test: "
            f"{more})")


class GateRefused(OrstreamError, RuntimeError):
    """The INT8 engine lost more accuracy than allowed; nothing was stored. Exit 1: the
    command ran and gave its verdict, as a failed test does."""

    exit_code = 1

    def __init__(self, report: GateReport, report_dir: Path, method: str) -> None:
        counted = [c for c in report.classes if c.get("averaged", True)]
        worst = ", ".join(f"{c['name']} -{c['drop_points']:.2f}" for c in counted[:3]
                          if c["drop_points"] > 0) or "none in particular"
        others = " or ".join(m for m in METHODS if m != method)
        super().__init__(
            f"INT8 {report.backend} engine refused: mean Dice against {report.reference} "
            f"dropped {report.drop_dice_points:.2f} points (threshold "
            f"{report.threshold_dice_points:.2f})"
            f"{_why_float(report) if report.decided_by == FLOAT_ENGINE else ''}; lost "
            f"most: {worst}. Nothing stored; "
            f"report in {report_dir}. To do: calibrate on more frames or frames closer to "
            f"the deployment's video (`calibrate collect --frames 600 --source ...`), try "
            f"--method {others}, accept a larger drop with --threshold "
            f"{max(report.drop_dice_points, report.threshold_dice_points) + 0.5:.1f}, or "
            f"keep segment.precision fp32 (or auto)")
        self.report = report


def _labels(engine, frames: np.ndarray) -> np.ndarray:
    return np.stack([engine(f) for f in frames])


def _write_report(report: GateReport, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    (folder / "report.md").write_text(report.markdown())


def build_int8(weights: Path | str, backend: str, calib: Path | str,
               size: tuple[int, int] | None = None, threshold: float = 1.0,
               cache: EngineCache | None = None, report_dir: Path | None = None,
               method: str = "minmax") -> Entry:
    weights, calib = Path(weights), Path(calib)
    if backend not in INT8_DEVICE:
        raise BackendError(f"INT8 calibration is for backends {', '.join(INT8_DEVICE)}, "
                           f"not {backend}")
    if method not in METHODS:
        raise CalibrationError(f"--method {method}: choose one of {', '.join(METHODS)}")
    device = INT8_DEVICE[backend]
    calib_set = load_set(calib)
    if size is not None and tuple(size) != calib_set.size:
        raise CalibrationError(
            f"calibration set {calib} holds {format_hw(calib_set.size)} (WxH) frames but "
            f"--size {format_hw(size)} was asked for: collect again with --size "
            f"{format_hw(size)}")
    cache = cache or EngineCache()
    plan = resolve(EngineSpec(weights, backend, "int8", calib_set.size, device, cache=cache.root))
    cls, size = plan.cls, plan.size
    checkpoint = ckpt.load(weights)
    report_dir = report_dir or Path(f"int8-gate-{backend}")
    key = plan.key(extra={"calibration_sha256": calib_set.sha256()})

    # TensorRT calibrates with its own tool; the CPU backends' int8 kernels may need 7 bits.
    weight_bits = 7 if device == "cpu" and needs_reduced_int8_range() else 8
    if weight_bits == 7:
        logger.info("this CPU ({}) has no int8 dot-product instruction (VNNI, AMX): its int8 "
                    "kernels sum in saturating 16-bit registers, so weights are quantised to "
                    "7 bits", " ".join(cpu_isa()) or "unknown ISA")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        candidate = tmp / cls.artifact
        # The engine's build time is the export, quantisation and compile here: the cache
        # only copies the finished file in (its own timer would say a millisecond).
        t0 = time.perf_counter()
        if backend == "tensorrt":
            cls.build_int8(checkpoint, size, calib_set.frames, candidate)
        else:
            float_onnx = export_onnx(checkpoint, size, tmp / "float.onnx")
            int8_onnx = quantize_onnx(float_onnx, calib_set.frames, tmp / "int8.onnx", method,
                                      weight_bits)
            cls.build_from_onnx(int8_onnx, "int8", candidate)
        build_s = time.perf_counter() - t0
        logger.info("INT8 {} engine built in {:.1f} s", backend, build_s)
        int8 = cls(candidate, size, "int8", device)
        float_engine = open_engine(replace(plan.spec, precision=FLOAT_OF[backend]))

        logger.info("gate: segmenting {} held-out frames with the float and INT8 engines",
                    len(calib_set.holdout))
        float_labels = _labels(float_engine, calib_set.holdout)
        int8_labels = _labels(int8, calib_set.holdout)
        truth = calib_set.holdout_truth.get(checkpoint.task)
        report = judge(float_labels, int8_labels, truth, checkpoint.classes, backend,
                       threshold, f"ground truth ({checkpoint.task})")
        report.weight_bits = weight_bits
        frame = calib_set.holdout[0]
        report.latency_ms = {
            name: float(np.median(time_calls(lambda e=e: e(frame), iters=30, warmup=5)))
            for name, e in ((FLOAT_OF[backend], float_engine), ("int8", int8))}
        for what, c in report.comparisons():
            logger.info("gate: against {} ({} frames): mean Dice float {:.2f}, INT8 {:.2f}, "
                        "drop {:.2f} points{}", what, c.frames, 100 * c.float_mean_dice,
                        100 * c.int8_mean_dice, c.drop_dice_points,
                        f" (decides; threshold {threshold:.2f})" if c is report.decision
                        else "")
        logger.info("gate: {}", report.why)
        logger.info("gate: p50 ms: {}",
                    ", ".join(f"{k} {v:.2f}" for k, v in report.latency_ms.items()))
        if not report.passed:
            _write_report(report, report_dir)
            raise GateRefused(report, report_dir, method)
        notes = {"weights": str(weights), "gate": report.to_dict(),
                 "calibration": {"file": str(calib), "sources": calib_set.provenance["sources"],
                                 "frames": len(calib_set.frames), "method": method,
                                 "weight_bits": weight_bits}}
        entry = cache.store(key, cls.artifact, lambda out: shutil.copyfile(candidate, out),
                            notes=notes, build_s=build_s)
    _write_report(report, entry.folder)
    logger.info("INT8 engine stored in {} (gate report beside it)", entry.folder)
    return entry
