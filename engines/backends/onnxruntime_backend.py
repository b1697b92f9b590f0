"""ONNX Runtime on the CPU, from an ONNX export of the deployable graph.

INT8 engines (static QDQ quantisation) are built by the calibration package and run here too.
"""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from orstream.engines.backends.base import (
    BackendError,
    Engine,
    import_backend,
    refuse_precision,
    require_cpu,
)

if TYPE_CHECKING:
    from orstream.engines.checkpoint import Checkpoint


def _ort():
    return import_backend("onnxruntime", "onnxruntime", "openvino or torch")


class OnnxRuntimeEngine(Engine):
    name = "onnxruntime"
    artifact = "model.onnx"

    @classmethod
    def check(cls, precision: str, device: str) -> None:
        _ort()
        require_cpu(cls.name, device)
        refuse_precision(cls.name, precision, device, ("fp32", "int8"))

    @classmethod
    def versions(cls) -> dict[str, str]:
        # onnx and torch export the graph; read their versions from the installed packages
        # (importing torch to ask costs seconds at start-up).
        return {"onnxruntime": _ort().__version__, "onnx": version("onnx"),
                "torch": version("torch")}

    @classmethod
    def build(cls, checkpoint: Checkpoint, size: tuple[int, int], precision: str, device: str,
              out: Path) -> None:
        if precision == "int8":
            raise BackendError("int8 onnxruntime engines come from `orstream calibrate build` "
                               "(they need a calibration set); export fp32 here")
        from orstream.engines.backends.onnx_export import export_onnx

        export_onnx(checkpoint, size, out)

    @classmethod
    def build_from_onnx(cls, onnx_file: Path, precision: str, out: Path) -> None:
        """The engine is the ONNX model itself (float, or INT8 QDQ from calibration)."""
        out.write_bytes(Path(onnx_file).read_bytes())

    def __init__(self, artifact: Path, size: tuple[int, int], precision: str,
                 device: str = "cpu", threads: int | None = None) -> None:
        super().__init__(artifact, size, precision, device, threads)
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads is not None:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: its warnings go to stderr, unlogged
        # Idle intra-op threads would otherwise spin for the next call, stealing the cores
        # that capture, render and the encoder share with the model in the pipeline.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(artifact), options,
                                            providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0].name

    def run(self, frames: np.ndarray, inputs: dict[str, np.ndarray] | None = None
            ) -> np.ndarray:
        feeds = {self._input: frames} if inputs is None else {self._input: frames, **inputs}
        return self.session.run(None, feeds)[0]
