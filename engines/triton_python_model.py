"""The Triton Python-backend model that `orstream export --backend triton --triton-runtime
python` copies into a model repository as `<model>/<version>/model.py`.

Triton's own process runs it inside a Python-backend stub: it serves the exported ONNX graph
(uint8 NHWC frames -> uint8 labels, normalisation and argmax inside the graph) with ONNX
Runtime or OpenVINO, picked by the config's `runtime` parameter. That is what the
`tritonserver` binary shipped in the nvidia-pytriton wheel can run, since the wheel has no
native onnxruntime or openvino backend; the official container serves the same ONNX file
with its native backends instead (engines/triton_repo.py writes those configs).

This file is read by Triton, not imported by orstream: it needs only numpy, the runtime, and
`triton_python_backend_utils`, which exists only inside the stub (imported in `initialize`, so
that tooling can import this module anywhere).
"""

from __future__ import annotations

import ctypes
import importlib
import json
import os
from typing import Any

import numpy as np

# The stub in nvidia-pytriton 0.7.0 (Triton 2.51) was built against numpy 1. Under numpy 2,
# Tensor.as_numpy() returned wrong bytes and pb_utils.Tensor(name, array) sent an empty output
# with no error anywhere (measured, benchmarks/reports/2026-12-06-xeon-amx-2core/triton-spike):
# DLPack is right under numpy 2, and makes the stub unhealthy under numpy 1.
NUMPY2 = int(np.__version__.split(".")[0]) >= 2

pb_utils: Any = None  # triton_python_backend_utils, bound in initialize()


def _input(request: Any, name: str) -> np.ndarray:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return np.from_dlpack(tensor) if NUMPY2 else tensor.as_numpy()


# The stub marks a DLPack capsule it has consumed "used_dlpack", not the standard
# "used_dltensor". numpy's capsule destructor then takes the capsule for an unconsumed one,
# fails to read it, and prints an "unraisable" traceback to the server's log: one per frame
# (about 150 lines a second at 30 fps; making the output tensor took 0.36 ms, 0.14 ms without
# the traceback, measured inside the stub). So the capsule is made here and, once the stub
# holds the tensor (and will call its deleter), marked consumed by the standard name:
# numpy's destructor then leaves it alone.
_set_capsule_name = ctypes.pythonapi.PyCapsule_SetName
_set_capsule_name.argtypes = [ctypes.py_object, ctypes.c_char_p]
_set_capsule_name.restype = ctypes.c_int
_CONSUMED = b"used_dltensor"  # a module constant: the capsule keeps a pointer to it


def _output(name: str, array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array)
    if not NUMPY2:
        return pb_utils.Tensor(name, array)
    capsule = array.__dlpack__()
    tensor = pb_utils.Tensor.from_dlpack(name, capsule)
    _set_capsule_name(capsule, _CONSUMED)
    return tensor


class _OnnxRuntime:
    def __init__(self, path: str, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads
        # Spinning idle threads would take the cores the other instances and rooms need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        self.version = f"onnxruntime {ort.__version__}"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"frames": frames})[0]


class _OpenVino:
    def __init__(self, path: str, threads: int) -> None:
        import openvino as ov

        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}  # as the local fp32 engine
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self.model = ov.Core().compile_model(path, "CPU", config)
        self.version = f"openvino {ov.get_version()}"

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        return next(iter(self.model(frames).values()))


RUNTIMES = {"onnxruntime": _OnnxRuntime, "openvino": _OpenVino}


class TritonPythonModel:
    """One instance per `instance_group` count. `execute` gets every request the dynamic
    batcher merged (frames of several rooms): one inference over their concatenation, split
    back per request."""

    def initialize(self, args: dict[str, str]) -> None:
        global pb_utils
        pb_utils = importlib.import_module("triton_python_backend_utils")
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        runtime = params.get("runtime", "onnxruntime")
        if runtime not in RUNTIMES:
            raise ValueError(f"parameter runtime {runtime!r}: choose {' or '.join(RUNTIMES)}")
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.infer = RUNTIMES[runtime](path, int(params.get("threads", "0")))
        pb_utils.Logger.log_info(f"{args['model_name']}: {self.infer.version}, numpy "
                                 f"{np.__version__}, instance {args['model_instance_name']}")

    def execute(self, requests: list[Any]) -> list[Any]:
        frames = [_input(r, "frames") for r in requests]
        labels = self.infer(frames[0] if len(frames) == 1 else np.concatenate(frames))
        responses, start = [], 0
        for batch in frames:
            end = start + batch.shape[0]
            out = _output("labels", labels[start:end])
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
            start = end
        return responses

    def finalize(self) -> None:
        self.infer = None
