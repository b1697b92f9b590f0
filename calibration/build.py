"""`orstream calibrate build`: quantise, gate, and store the INT8 engine only if it passes.

The INT8 engine goes into the engine cache under the same key as a float engine of that
backend would (weights, size, backend and library versions, device) with precision int8 and
the calibration set's hash added, and its gate report (JSON and Markdown) beside it. A
refused engine is never stored: its report is written to `report_dir` and the command
exits non-zero.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from loguru import logger
from orstream.benchmarks.common import time_calls
from orstream.calibration.gate import GateReport, judge
from orstream.calibration.quantize import quantize_onnx
from orstream.calibration.sets import CalibrationError, load_set
from orstream.engines import checkpoint as ckpt
from orstream.engines.backends import BackendError, backend_class
from orstream.engines.backends.base import cpu_isa, needs_reduced_int8_range
from orstream.engines.backends.onnx_export import export_onnx
from orstream.engines.cache import EngineCache, Entry
from orstream.engines.export import engine_key, load_engine

# backend -> the device it quantises for; the float engine it is gated against is that
# backend's own float precision (TensorRT's fp16, the CPUs' fp32).
INT8_BACKENDS = {"onnxruntime": "cpu", "openvino": "cpu", "tensorrt": "cuda"}
FLOAT_OF = {"onnxruntime": "fp32", "openvino": "fp32", "tensorrt": "fp16"}


class GateRefused(RuntimeError):
    """The INT8 engine lost more accuracy than allowed; nothing was stored."""

    def __init__(self, report: GateReport, report_dir: Path) -> None:
        worst = ", ".join(f"{c['name']} -{c['drop_points']:.2f}" for c in report.classes[:3])
        super().__init__(
            f"INT8 {report.backend} engine refused: mean Dice dropped "
            f"{report.drop_dice_points:.2f} points (threshold "
            f"{report.threshold_dice_points:.2f}); lost most: {worst}. Nothing stored; "
            f"report in {report_dir}. Try a calibration set closer to the deployment's video, "
            f"or keep precision fp32")
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
    if backend not in INT8_BACKENDS:
        raise BackendError(f"INT8 calibration is for backends {', '.join(INT8_BACKENDS)}, "
                           f"not {backend}")
    device = INT8_BACKENDS[backend]
    cls = backend_class(backend)
    cls.check("int8", device)
    checkpoint = ckpt.load(weights)
    calib_set = load_set(calib)
    if size is not None and tuple(size) != calib_set.size:
        raise CalibrationError(
            f"calibration set {calib} holds {calib_set.size[0]}x{calib_set.size[1]} frames but "
            f"--size {size[0]}x{size[1]} was asked for: collect again with --size "
            f"{size[0]}x{size[1]}")
    size = calib_set.size
    cache = cache or EngineCache()
    report_dir = report_dir or Path(f"int8-gate-{backend}")
    key = engine_key(weights, checkpoint, size, backend, "int8", device,
                     extra={"calibration_sha256": calib_set.sha256()})

    # TensorRT calibrates with its own tool; the CPU backends' int8 kernels may need 7 bits.
    weight_bits = 7 if device == "cpu" and needs_reduced_int8_range() else 8
    if weight_bits == 7:
        logger.info("this CPU ({}) has no int8 dot-product instruction (VNNI, AMX): its int8 "
                    "kernels sum in saturating 16-bit registers, so weights are quantised to "
                    "7 bits", " ".join(cpu_isa()) or "unknown ISA")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        candidate = tmp / cls.artifact
        if backend == "tensorrt":
            cls.build_int8(checkpoint, size, calib_set.frames, candidate)
        else:
            float_onnx = export_onnx(checkpoint, size, tmp / "float.onnx")
            int8_onnx = quantize_onnx(float_onnx, calib_set.frames, tmp / "int8.onnx", method,
                                      weight_bits)
            cls.build_from_onnx(int8_onnx, "int8", candidate)
        int8 = cls(candidate, size, "int8", device)
        float_engine = load_engine(weights, backend, FLOAT_OF[backend], size, device,
                                   cache=cache, checkpoint=checkpoint)

        logger.info("gate: segmenting {} held-out frames with the float and INT8 engines",
                    len(calib_set.holdout))
        float_labels = _labels(float_engine, calib_set.holdout)
        int8_labels = _labels(int8, calib_set.holdout)
        truth = calib_set.holdout_labels.get(checkpoint.task)
        report = judge(float_labels, int8_labels, truth, checkpoint.classes, backend,
                       threshold, f"ground truth ({checkpoint.task})")
        report.weight_bits = weight_bits
        frame = calib_set.holdout[0]
        report.latency_ms = {
            name: float(np.median(time_calls(lambda e=e: e(frame), iters=30, warmup=5)))
            for name, e in ((FLOAT_OF[backend], float_engine), ("int8", int8))}
        logger.info("gate: mean Dice float {:.2f}, INT8 {:.2f}, drop {:.2f} points "
                    "(threshold {:.2f}); p50 ms: {}", 100 * report.float_mean_dice,
                    100 * report.int8_mean_dice, report.drop_dice_points, threshold,
                    ", ".join(f"{k} {v:.2f}" for k, v in report.latency_ms.items()))
        if not report.passed:
            _write_report(report, report_dir)
            raise GateRefused(report, report_dir)
        entry = cache.store(key, cls.artifact, lambda out: shutil.copyfile(candidate, out),
                            notes={"weights": str(weights), "gate": report.to_dict(),
                                   "calibration": {"file": str(calib),
                                                   "sources": calib_set.provenance["sources"],
                                                   "frames": len(calib_set.frames),
                                                   "method": method,
                                                   "weight_bits": weight_bits}})
    _write_report(report, entry.folder)
    logger.info("INT8 engine stored in {} (gate report beside it)", entry.folder)
    return entry
