"""Inference backends behind one interface (engines/backends/base.py), chosen by name."""

from __future__ import annotations

from engines.backends.base import BackendError, Engine
from engines.backends.compile_backend import CompiledEngine
from engines.backends.onnxruntime_backend import OnnxRuntimeEngine
from engines.backends.openvino_backend import OpenVinoEngine
from engines.backends.tensorrt_backend import TensorRtEngine
from engines.backends.torch_backend import TorchSegmenter

BACKENDS: dict[str, type[Engine]] = {
    cls.name: cls
    for cls in (TorchSegmenter, CompiledEngine, OnnxRuntimeEngine, OpenVinoEngine,
                TensorRtEngine)
}

__all__ = ["BACKENDS", "BackendError", "Engine", "backend_class"]


def backend_class(name: str) -> type[Engine]:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]
