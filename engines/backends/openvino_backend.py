"""OpenVINO on the CPU: the fastest engine measured on these machines (see
benchmarks/engines.py). The cached engine is OpenVINO's compiled model blob, which is
specific to the CPU's instruction set and the precision it was compiled for: the cache key
carries the CPU model and its ISA features, so a blob tuned for AMX is never imported on an
AVX2-only machine.

A TP-SIS engine takes the prompt state as inputs whose prompt axis is dynamic, so one blob
serves any prompts. OpenVINO runs a dynamic-shape model with fewer fusions: measured on the
2-core EPYC (AVX-512 BF16), 3 prompts took 15.1 ms against 13.2 ms with the prompt count
fixed (bf16; fp32 21.8 against 19.6), the stem's bias and ReLU left unfused among the
losses. So the ONNX graph is kept beside the blob, and `prepare` compiles it for the prompt
count about to be used (0.3 s, off the frame path, once per count); frames with a count no
model was compiled for run on the dynamic blob.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from loguru import logger

from orstream.engines.backends.base import (
    BackendError,
    Engine,
    import_backend,
    refuse_precision,
    require_cpu,
)

if TYPE_CHECKING:
    from orstream.engines.checkpoint import Checkpoint

# OpenVINO's names for the precisions it can be told to infer in. An INT8 (QDQ) model runs
# its quantised convolutions in int8 whatever the hint; the rest stays in f32.
_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", "int8": "f32"}
# OPTIMIZATION_CAPABILITIES entries that mean the CPU runs that precision natively.
_CAPABILITY = {"bf16": "BF16", "fp16": "FP16"}
GRAPH = "model.onnx"  # beside a prompted engine's blob: compiled again for fixed shapes
FIXED_MODELS = 4  # prompt counts kept compiled (each ~ the weights and its buffers)


def _ov():
    # `import openvino` reports itself to Google Analytics unless the user opted out: a
    # process forked from the importing thread (a stage thread, with TBB loaded: unsafe)
    # posts to the network and a client id is written under ~/intel. Neither belongs in an
    # operating room, nor in a start-up a killed recording pays for. OpenVINO falls back to
    # its own no-op stub when openvino_telemetry cannot be imported, which a None entry in
    # sys.modules makes so: for this process only, the user's consent file left alone.
    sys.modules.setdefault("openvino_telemetry", None)
    return import_backend("openvino", "openvino", "onnxruntime or torch")


def _capabilities() -> set[str]:
    return set(_ov().Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def _config(precision: str, threads: int | None) -> dict[str, object]:
    # The precision hint must be given again on import: an imported blob otherwise runs in
    # the CPU's default, which is bf16 on AMX machines even for an engine built as fp32.
    config: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY",
                                 "INFERENCE_PRECISION_HINT": _HINTS[precision]}
    if threads is not None:
        config["INFERENCE_NUM_THREADS"] = threads
    return config


class OpenVinoEngine(Engine):
    name = "openvino"
    artifact = "model.blob"

    @classmethod
    def check(cls, precision: str, device: str) -> None:
        _ov()
        require_cpu(cls.name, device)
        refuse_precision(cls.name, precision, device, ("fp32", "bf16", "fp16", "int8"))
        caps = _capabilities()
        if precision in _CAPABILITY and _CAPABILITY[precision] not in caps:
            raise BackendError(f"precision {precision} asked for (openvino backend), but this "
                               f"CPU does not run it natively (OpenVINO reports "
                               f"{', '.join(sorted(caps))}): use precision fp32")

    @classmethod
    def native_precisions(cls, device: str) -> tuple[str, ...]:
        # bf16 (AMX or AVX-512 BF16) first: measured 2-3x faster than fp32 where present.
        return ("bf16", "fp32") if "BF16" in _capabilities() else ("fp32",)

    @classmethod
    def versions(cls) -> dict[str, str]:
        # torch exports the ONNX graph: its version is part of the engine's key. Read from
        # the installed package: importing torch to ask costs seconds at start-up.
        return {"openvino": _ov().get_version(), "torch": version("torch")}

    @classmethod
    def build(cls, checkpoint: Checkpoint, size: tuple[int, int], precision: str, device: str,
              out: Path) -> None:
        if precision == "int8":
            raise BackendError("int8 openvino engines come from `orstream calibrate build` "
                               "(they need a calibration set); export fp32 or bf16 here")
        from orstream.engines.backends.onnx_export import export_onnx

        with tempfile.TemporaryDirectory() as tmp:
            onnx_file = export_onnx(checkpoint, size, Path(tmp) / "model.onnx")
            cls.build_from_onnx(onnx_file, precision, out)

    @classmethod
    def build_from_onnx(cls, onnx_file: Path, precision: str, out: Path) -> None:
        """Compile an ONNX model (float, or INT8 QDQ from the calibration package) to a blob."""
        core = _ov().Core()
        compiled = core.compile_model(core.read_model(str(onnx_file)), "CPU",
                                      _config(precision, None))
        blob = compiled.export_model()  # a BytesIO in recent OpenVINO, bytes in older ones
        out.write_bytes(blob.getvalue() if hasattr(blob, "getvalue") else blob)
        if len(compiled.inputs) > 1:  # prompted (TP-SIS): kept for `prepare`
            shutil.copyfile(onnx_file, out.with_name(GRAPH))

    def __init__(self, artifact: Path, size: tuple[int, int], precision: str,
                 device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(artifact, size, precision, device, threads)
        ov = _ov()
        core = ov.Core()
        self.compiled = core.import_model(Path(artifact).read_bytes(), "CPU",
                                          _config(precision, threads))
        running = str(self.compiled.get_property("INFERENCE_PRECISION_HINT"))
        expected = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16",
                    "int8": "float32"}[precision]
        if expected not in running:
            raise BackendError(f"openvino runs this engine in {running}, not the {precision} "
                               f"asked for")
        self.request = self.compiled.create_infer_request()
        self._input = self.compiled.inputs[0].get_any_name()
        self._core, self._config = core, _config(precision, threads)
        graph = Path(artifact).with_name(GRAPH)
        self._graph = graph if len(self.compiled.inputs) > 1 and graph.is_file() else None
        # feed shapes (_shape_key) -> an infer request of the model compiled for exactly them
        self._fixed: dict[tuple, object] = {}

    def prepare(self, inputs: dict[str, np.ndarray]) -> None:
        """Compile the model for one frame with these prompt-state shapes (their prompt
        count), so that such frames run on it instead of the dynamic-shape blob."""
        if self._graph is None:
            return
        h, w = self.input_size
        key = _shape_key((1, h, w, 3), inputs)
        if key in self._fixed:
            return
        try:
            model = self._core.read_model(str(self._graph))
            model.reshape({self._input: [1, h, w, 3],
                           **{name: list(a.shape) for name, a in inputs.items()}})
            request = self._core.compile_model(model, "CPU",
                                               self._config).create_infer_request()
        except Exception as exc:  # noqa: BLE001 - the dynamic blob still serves these frames
            logger.warning("openvino: no model compiled for feed shapes {} ({}); frames run "
                           "on the dynamic-shape engine", key, exc)
            return
        # A new dict, assigned once: the frame path reads it from another thread. The count
        # compiled first goes first.
        fixed = {**self._fixed, key: request}
        while len(fixed) > FIXED_MODELS:
            del fixed[next(iter(fixed))]
        self._fixed = fixed

    def run(self, frames: np.ndarray, inputs: dict[str, np.ndarray] | None = None
            ) -> np.ndarray:
        if inputs is None:
            return self.request.infer({0: frames}, share_inputs=True)[0]
        request = (self._fixed.get(_shape_key(frames.shape, inputs), self.request)
                   if self._fixed else self.request)
        return request.infer({self._input: frames, **inputs}, share_inputs=True)[0]


def _shape_key(frames_shape: tuple[int, ...], inputs: dict[str, np.ndarray]) -> tuple:
    """One call's feed shapes, the prompt state's in its own order (the encoder always gives
    the same): a few tuples, cheap enough to build on every frame."""
    return (tuple(frames_shape), *(a.shape for a in inputs.values()))
