"""Inference backends behind one interface (engines/backends/base.py), chosen by name.

Each backend's module is imported when the backend is first asked for: the torch-based ones
import torch, which costs seconds, and a pipeline running a cached OpenVINO engine never needs
it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping

from orstream.engines.backends.base import BackendError, Engine

_MODULES = {
    "torch": ("orstream.engines.backends.torch_backend", "TorchSegmenter"),
    "compile": ("orstream.engines.backends.compile_backend", "CompiledEngine"),
    "onnxruntime": ("orstream.engines.backends.onnxruntime_backend", "OnnxRuntimeEngine"),
    "openvino": ("orstream.engines.backends.openvino_backend", "OpenVinoEngine"),
    "tensorrt": ("orstream.engines.backends.tensorrt_backend", "TensorRtEngine"),
}


class _Registry(Mapping[str, type[Engine]]):
    """name -> backend class, importing the class's module on first access."""

    def __getitem__(self, name: str) -> type[Engine]:
        module, attr = _MODULES[name]
        cls = getattr(importlib.import_module(module), attr)
        assert cls.name == name, (name, cls.name)
        return cls

    def __contains__(self, name: object) -> bool:  # without importing the module
        return name in _MODULES

    def __iter__(self) -> Iterator[str]:
        return iter(_MODULES)

    def __len__(self) -> int:
        return len(_MODULES)


BACKENDS: Mapping[str, type[Engine]] = _Registry()

__all__ = ["BACKENDS", "BackendError", "Engine", "backend_class"]


def backend_class(name: str) -> type[Engine]:
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r}: choose one of {', '.join(BACKENDS)}")
    return BACKENDS[name]
